"""The HTML card of one SAE feature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


from .. import _atomic
from .common import check_parent_dirs


def _tok_html(text: str) -> str:
    import html

    return html.escape(text.replace("▁", " ").replace("Ġ", " ").replace("\n", "⏎"))


def write_feature_card(path: Path, card: Mapping[str, Any]) -> Path:
    """Write :func:`card_html` to ``path`` (atomically)."""
    path = Path(path)
    check_parent_dirs(path, "--html")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic.write_text(path, card_html(card))
    return path


def card_html(card: Mapping[str, Any]) -> str:
    """A self-contained HTML page for one SAE feature: contexts with the firing token marked,
    logit-lens tokens, activation density. No scripts, no network."""
    import html

    maxact = max([c["activation"] for c in card["contexts"]] or [1.0])
    ctx_rows = []
    for c in card["contexts"]:
        spans = []
        for j, (tok, act) in enumerate(c["tokens"]):
            alpha = max(0.0, min(1.0, act / maxact)) if maxact > 0 else 0.0
            style = f"background: rgba(255,140,0,{alpha:.2f});" + (" outline: 2px solid #c00;" if j == c["firing"] else "")
            spans.append(f'<span style="{style}" title="{act:.3f}">{_tok_html(tok)}</span>')
        ctx_rows.append(f'<tr><td class="num">{c["activation"]:.2f}</td><td class="ctx">{"".join(spans)}</td></tr>')
    lens = lambda rows: "".join(f"<li><code>{_tok_html(t)}</code> <span class='num'>{s:+.3f}</span></li>" for t, s in rows)  # noqa: E731
    d = card["density"]
    prov = html.escape(json.dumps(card["provenance"], indent=2))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Feature {card['feature']} · {html.escape(card['sae'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; }} td {{ padding: 0.25em 0.6em; border-bottom: 1px solid #eee; vertical-align: top; }}
.num {{ font-variant-numeric: tabular-nums; text-align: right; color: #555; }}
.ctx span {{ white-space: pre; font-family: ui-monospace, monospace; }}
.cols {{ display: flex; gap: 3em; }} code {{ background: #f4f4f4; padding: 0 0.2em; }}
pre {{ background: #f8f8f8; padding: 1em; overflow: auto; font-size: 0.8em; }}
</style></head><body>
<h1>Feature {card['feature']}</h1>
<p>SAE <code>{html.escape(card['sae'])}</code> on <code>{html.escape(card['model'])}</code> at
<code>{html.escape(card['hook'])}</code>. Fires on {d['fraction']:.3%} of {d['n_tokens']:,} held-out tokens;
mean activation when firing {d['mean_when_firing']:.3f}, max {d['max']:.3f}.</p>
<h2>Top-activating contexts</h2>
<p>Shading is the feature's activation on each token; the outlined token is the maximum.</p>
<table>{''.join(ctx_rows) or '<tr><td>The feature never fires on the held-out tokens.</td></tr>'}</table>
<h2>Decoder logit lens</h2>
<div class="cols"><div><h3>Promoted tokens</h3><ol>{lens(card['logit_lens']['top'])}</ol></div>
<div><h3>Suppressed tokens</h3><ol>{lens(card['logit_lens']['bottom'])}</ol></div></div>
<h2>Provenance</h2><pre>{prov}</pre>
</body></html>
"""
    return page
