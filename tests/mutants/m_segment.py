"""Segmentation's mechanism breakages: Grounded-SAM (GroundingDINO boxes -> SAM), SAM clicks, CLIPSeg,
and the `python -m engine segment` command."""
from tests.mutants import Mutant

TESTS = ("tests/test_segment.py",)
F = "engine/core/segment.py"
F_CLI = "engine/segment_cli.py"

MUTANTS = [
    Mutant("segment.sam-box-is-whole-image", F,
           "mask = sam_masks_from_boxes(sam, image, boxes, embedding_cache)",
           "mask = sam_masks_from_boxes(sam, image, [Box(0, 0, image.width, image.height, 1.0, phrase)], "
           "embedding_cache)",
           "Grounded-SAM: SAM is prompted with GroundingDINO's boxes, not the whole image"),
    Mutant("segment.sam-boxes-not-scaled", F,
           "input_boxes = _scale(coords, emb)[None]", "input_boxes = torch.tensor(coords)[None]",
           "Grounded-SAM: boxes move into SAM's resized input frame"),
    Mutant("segment.box-threshold-ignored", F,
           "detect_boxes(gdino, image, phrase, box_threshold, text_threshold)",
           "detect_boxes(gdino, image, phrase, 0.3, text_threshold)",
           "GroundingDINO: the caller's box threshold decides which boxes are kept"),
    Mutant("segment.cli-box-threshold-ignored", F_CLI,
           "args.text, args.box_threshold, args.text_threshold)", "args.text, 0.3, args.text_threshold)",
           "segment command: --box-threshold reaches GroundingDINO"),
    Mutant("segment.negative-clicks-positive", F,
           "input_labels = torch.tensor([[labels]], dtype=torch.long, device=sam.device)",
           "input_labels = torch.ones((1, 1, len(labels)), dtype=torch.long, device=sam.device)",
           "SAM clicks: a negative click is a background label (0)"),
    Mutant("segment.cli-negative-clicks-positive", F_CLI,
           'return x, y, parts[2] in ("+", "1")', "return x, y, True",
           "segment command: x,y,- is a negative click"),
    Mutant("segment.clipseg-no-sigmoid", F,
           "torch.sigmoid(logits), size=(image.height, image.width)",
           "logits, size=(image.height, image.width)",
           "CLIPSeg: the mask is sigmoid(logits), a probability"),
    Mutant("segment.clipseg-min-max-normalised", F,
           "torch.sigmoid(logits), size=(image.height, image.width)",
           "(logits - logits.min()) / (logits.max() - logits.min()), size=(image.height, image.width)",
           "CLIPSeg: the mask is sigmoid(logits), not stretched to [0, 1]"),
    Mutant("segment.cli-text-and-clicks-not-joined", F_CLI,
           "mask = M.union(parts)", "mask = parts[-1]",
           "segment command: the text mask and the click mask are joined (union)"),
    Mutant("segment.cli-method-flag-collides", F_CLI,
           'parser.add_argument("--method", dest="segmenter", choices=METHODS',
           'parser.add_argument("--method", choices=METHODS',
           "python -m engine segment: --method must not overwrite the command's name (README command)",
           tests=("tests/test_readme_cli.py::test_readme_command_runs[segment]",
                  "tests/test_readme_cli.py::test_readme_command_runs[segment-method]")),
]
