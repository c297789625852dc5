"""Numbers typed out of range get one treatment in every field: set to the nearest end of the
field's range, with a note beside the field saying so.

Left to Gradio 6.31, a value typed past a slider's end was sometimes clamped (Resolution 3000 ->
1024), sometimes silently put back to the previous value (DDIM steps 500 -> 20), and a number
box (Seed -5) was sent and refused at Edit. The page script below runs before Gradio's own
handlers (a capturing listener on the document, on Enter, on leaving the box and on change): a
number outside the box's min/max becomes that bound, Gradio is told through an `input` event,
and a note "DDIM steps goes from 1 to 200: 500 was set to 200." shows under the field for a
few seconds. The server still checks every value (the API accepts what no widget sends).
Guarding test: tests/test_browser_typed_values.py.
"""
from __future__ import annotations

NOTE_CLASS = "des-range-note"

CLAMP_JS = """
() => {
  if (window.__desClamp) return;
  window.__desClamp = true;
  const name = (input) => (input.getAttribute('aria-label') || 'This field').replace(/^number input for /, '');
  const fmt = (x) => String(Number(x));
  const clamp = (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.type !== 'number') return;
    if (event.type === 'keydown' && event.key !== 'Enter') return;
    const text = input.value.trim();
    if (text === '') return;
    const value = Number(text);
    const lo = input.min === '' ? -Infinity : Number(input.min);
    const hi = input.max === '' ? Infinity : Number(input.max);
    if (!Number.isFinite(value) || (value >= lo && value <= hi)) return;
    const bound = value < lo ? lo : hi;
    input.value = fmt(bound);
    input.dispatchEvent(new Event('input', {bubbles: true}));
    const block = input.closest('.block') || input.parentElement;
    let note = block.querySelector('.""" + NOTE_CLASS + """');
    if (!note) {
      note = document.createElement('div');
      note.className = '""" + NOTE_CLASS + """';
      note.setAttribute('role', 'status');
      block.appendChild(note);
    }
    note.textContent = `${name(input)} goes from ${fmt(lo)} to ${fmt(hi)}: ${text} was set to ${fmt(bound)}.`;
    clearTimeout(note.__timer);
    note.__timer = setTimeout(() => note.remove(), 8000);
  };
  for (const type of ['keydown', 'focusout', 'change']) document.addEventListener(type, clamp, true);
}
"""


def install() -> None:
    """Run CLAMP_JS when the page loads (call inside the Blocks context)."""
    from ui.page_scripts import run_once_on_load

    run_once_on_load(CLAMP_JS)
