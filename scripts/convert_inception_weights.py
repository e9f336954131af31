"""Converts pytorch-fid's FID Inception checkpoint (.pth) into the .npz that eval reads.

    python scripts/convert_inception_weights.py \
        --src=pt_inception-2015-12-05-6726825d.pth --dst=inception_fid.npz

Needs torch (run it where the .pth was downloaded); checks every name and shape
(:func:`ebm_vs_score.metrics.inception.convert_torch_checkpoint`). Then pass
``--config.eval.inception_weights=/path/to/inception_fid.npz``. A file converter: it takes
no experiment config, so it has plain flags.
"""

from __future__ import annotations

from absl import app, flags

_SRC = flags.DEFINE_string("src", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")
_DST = flags.DEFINE_string("dst", None, "The .npz file to write.")
flags.mark_flags_as_required(["src", "dst"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ebm_vs_score.metrics import inception

    inception.convert_torch_checkpoint(_SRC.value, _DST.value)


if __name__ == "__main__":
    app.run(main)
