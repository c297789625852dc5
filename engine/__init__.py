"""Diffusion Edit Studio's engine: models, shared diffusion pieces and one module per paper.

Nothing here imports Gradio, and nothing loads a model or touches CUDA at import time.
"""
