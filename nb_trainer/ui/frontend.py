"""A small invisible widget with frontend code: what the panel needs from the page.

* Keys: Notebook 7 handles keyboard shortcuts before the focused element sees the key (its
  command registry listens in the capture phase), so ArrowLeft/ArrowRight on a focused slider
  moved nothing, and with a heading cell active ArrowLeft collapsed the heading. Lumino skips
  shortcuts for an event whose target carries ``data-lm-suppress-shortcuts``: this code puts
  it on the panel's focusable elements (slider handles, buttons, inputs, selects), so they
  take the keys they take in JupyterLab (where shortcuts are processed after the element).
* Size: it reports the width the plot is shown at and the screen's device-pixel ratio, so
  the figure is drawn at exactly that size (text at its intended size in CSS pixels) and
  sharp on high-density screens.

Written with anywidget (its prebuilt extension loads in JupyterLab, Notebook 7 and VS Code).
Without anywidget the panel works as before, drawn at its default size.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_ESM = r"""
const FOCUSABLE = '.noUi-handle, button, input, select, textarea';

function render({ model, el }) {
  el.style.display = 'none';
  let panel = null, mutations = null, resize = null, timer = null, tries = 0;
  const mark = () => {
    for (const node of panel.querySelectorAll(FOCUSABLE)) {
      if (!node.hasAttribute('data-lm-suppress-shortcuts')) {
        node.setAttribute('data-lm-suppress-shortcuts', 'true');
      }
    }
  };
  const report = () => {
    timer = null;
    const img = panel.querySelector('img.nbt-plot');
    if (!img || !img.isConnected) { return; }
    const width = Math.round(img.getBoundingClientRect().width);
    const dpr = window.devicePixelRatio || 1;
    if (width > 0 && (width !== model.get('width') || dpr !== model.get('dpr'))) {
      model.set('width', width);
      model.set('dpr', dpr);
      model.save_changes();
    }
  };
  const later = () => { if (timer === null) { timer = setTimeout(report, 250); } };
  const attach = () => {
    panel = el.closest('.nbt-panel');
    if (!panel) {                 // the view is not in the page yet
      if (tries++ < 200) { setTimeout(attach, 50); }
      return;
    }
    mark();
    mutations = new MutationObserver(mark);
    mutations.observe(panel, { childList: true, subtree: true });
    resize = new ResizeObserver(later);
    resize.observe(panel);
    later();
  };
  attach();
  return () => {
    if (mutations) { mutations.disconnect(); }
    if (resize) { resize.disconnect(); }
    if (timer !== null) { clearTimeout(timer); }
  };
}
export default { render };
"""


def make_helper():
    """The helper widget (``.width``, ``.dpr`` traits), or None when anywidget is not installed."""
    try:
        import anywidget
        import traitlets
    except ImportError:
        log.info("nb_trainer: anywidget is not installed; the plot is drawn at its default size and "
                 "Notebook 7 keeps the arrow keys from the sliders")
        return None

    class FrontendHelper(anywidget.AnyWidget):
        _esm = _ESM
        width = traitlets.Int(0).tag(sync=True)          # CSS pixels the plot is shown at (0: not known)
        dpr = traitlets.Float(1.0).tag(sync=True)        # device pixels per CSS pixel

    helper = FrontendHelper()
    helper.add_class("nbt-frontend")
    return helper
