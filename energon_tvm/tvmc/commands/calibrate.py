"""``tvmc calibrate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..main import command


def add_arguments(p) -> None:
    p.add_argument("model", help="ONNX model (.onnx) or torch.export program (.pt2)")
    p.add_argument("--calibration", required=True, metavar="INPUTS",
                   help="calibration inputs: an .npz with a leading sample axis, or a folder of .npz (as tvmc run "
                        "reads data sets)")
    p.add_argument("-o", "--output", required=True, help="thresholds file to write (.json)")
    p.add_argument("--model-format", choices=["onnx", "pytorch"], help="default: from the file suffix")
    p.add_argument("--target-energon-quality", default=None, metavar="BUDGET",
                   help="mean fraction of each row's softmax mass the kept keys hold, per head, in (0, 1] "
                        "(default 0.95, chosen across models and tasks: docs/accuracy.md)")
    p.add_argument("--target-energon-rule", default="gap", help="threshold rule of the mpmrf policy to calibrate: "
                   "gap (default) or mpmrf (the topk and sanger policies are set by their one value, not calibrated)")
    p.add_argument("--target-energon-rounds", help="filter rounds as QxK bits (default 4x2,4x4)")
    p.add_argument("--target-energon-config", help="hardware config: edge, server or a .toml file (default edge)")
    p.add_argument("--input-shapes", help='fix input shapes: "name:[1,128],mask:[1,128]"')


@command("calibrate", "calibrate per-site, per-head filter thresholds to a quality budget on sample inputs")(
    add_arguments)
def run(args) -> int:
    from ...calibration import DEFAULT_BUDGET
    from ...isa.config import load_config
    from ..package import atomic_write, check_output
    from ..thresholds import calibrate_model, summary_lines

    check_output(args.output, "-o")
    load_config(args.target_energon_config or "edge")  # a bad config fails before any work

    def say(msg: str) -> None:
        print(msg, file=sys.stderr)

    quality = DEFAULT_BUDGET if args.target_energon_quality is None else args.target_energon_quality
    result = calibrate_model(args.model, args.calibration, quality=quality,
                             rule=args.target_energon_rule, rounds=args.target_energon_rounds,
                             config=args.target_energon_config, model_format=args.model_format,
                             input_shapes=args.input_shapes, progress=True, verbose=args.verbose,
                             log=say if args.verbose else None)
    cal = result.calibration
    atomic_write(args.output, (json.dumps(result.record, indent=1) + "\n").encode())
    t = result.timings
    print(f"calibrated {Path(args.model).name} on {result.inputs} input(s): {len(cal.sites)} site(s), rule "
          f"{cal.rule}, rounds {','.join(f'{q}x{k}' for q, k in cal.bits)}, mass budget {cal.budget:g}; "
          f"{sum(t.values()):.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in t.items())})")
    for line in summary_lines(cal):
        print(line)
    print(f"  wrote {args.output}")
    return 0
