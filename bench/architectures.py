"""The README's "Architectures" table, generated from the applicability probe the registry runs at load.

For each family (random-init torchvision models at the input sizes of ``tests/engine/test_architectures.py``): the
default layer and the rule that chose it, the methods the probe offers, those it refuses (with the short reason)
and the caveats it attaches. Prints Markdown.

    python bench/architectures.py > /tmp/architectures.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))

from service.capabilities import probe
from service.engine.layers import choose_target_layer


def short(reason: str) -> str:
    """A refusal's gist for a table cell."""
    text = reason.lower()
    for key, gist in (("linear head", "no GAP→linear head"), ("non-negative", "negative activations at the layer"),
                      ("relu", "no ReLU-family activations"), ("no token layer", "no global token sequence"),
                      ("fused kernel", "attention not readable"), ("twice as fine", "no finer layer")):
        if key in text:
            return gist
    return reason[:60]


def main() -> None:
    from test_architectures import TABLE, build  # the families the tests check

    print("| family | input | default layer (why) | refused (why) | caveats |")
    print("|---|---:|---|---|---|")
    for name in TABLE:
        model, side = build(name)
        shape = (3, side, side)
        layer, reason = choose_target_layer(model, shape)
        caps = probe(model, input_shape=shape, task="multiclass", target_layer=layer, target_layer_reason=reason)
        groups: dict[str, list[str]] = {}
        for m, why in caps.methods.items():
            if why:
                groups.setdefault(short(why), []).append(m)
        refused = "; ".join(f"{', '.join(ms)} ({gist})" for gist, ms in groups.items()) or "–"
        notes: dict[str, list[str]] = {}
        for m, texts in caps.caveats.items():
            if m != "attention-rollout":  # its caveat (class-agnostic) holds everywhere: in the methods table
                notes.setdefault(texts[0], []).append(m)
        caveats = "; ".join(f"{', '.join(ms)}: {text}" for text, ms in notes.items()) or "–"
        rule = reason.split(";")[0].replace("the last spatial map in execution order that is not a pooling output",
                                            "last spatial map").split(" (after")[0]
        print(f"| {name} | {side} | `{layer}` ({rule}) | {refused} | {caveats} |")
        del model


if __name__ == "__main__":
    main()
