"""``tvmc compile``."""

from __future__ import annotations

import sys
from pathlib import Path

from ...schedules.cost import DEFAULT_OBJECTIVE, OBJECTIVES
from ..main import command
from ..target import add_target_arguments, target_options


def add_arguments(p) -> None:
    p.add_argument("model", help="ONNX model (.onnx) or torch.export program (.pt2)")
    p.add_argument("-o", "--output", required=True, help="package to write (.tar)")
    p.add_argument("--model-format", choices=["onnx", "pytorch"], help="default: from the file suffix")
    add_target_arguments(p)
    p.add_argument("--input-shapes", help='fix input shapes: "name:[1,128],mask:[1,128]" or, as classic tvmc, '
                   '"name:[1,128] mask:[1,128]"')
    p.add_argument("--tuning-records", action="append", metavar="FILE|FOLDER",
                   help="a file: Energon tuning records (tvmc tune; the best per workload is used); a folder: the "
                        "host kernels' MetaSchedule database (tvmc tune --host; the kernels it holds records of "
                        "for this build's CPU replace the default schedules); give both to use both")
    p.add_argument("--objective", choices=list(OBJECTIVES),
                   help="how the heuristic ranks the schedules of calls no tuning record covers: estimated "
                        f"cycles, energy, or their product (default: {DEFAULT_OBJECTIVE})")
    p.add_argument("--dump-code", help="comma list of isa,relax: write them next to the output")
    p.add_argument("--dump-offloads", metavar="-|FILE", help="list every attention site, offloaded or not and why")
    p.add_argument("-O", "--opt-level", type=int, metavar="0..3",
                   help="PassContext opt_level of the host build (default 2, TVM's; 0 skips the Relax "
                        "clean-up passes, 1-3 build alike today)")
    p.add_argument("--pass-config", action="append", metavar="KEY=VALUE", default=[],
                   help="a TVM PassContext option for the host build, e.g. tirx.disable_vectorize=true "
                        "(repeatable; bool and integer options)")
    p.add_argument("--package-key", metavar="FILE", help="sign the package with this key (hex, in FILE); default: "
                   "$ENERGON_PACKAGE_KEY_FILE or $ENERGON_PACKAGE_KEY, unsigned when neither is set")


@command("compile", "compile a model; attention goes to Energon, the rest to the host CPU")(add_arguments)
def run(args) -> int:
    from ..compiler import build_options, compile_model, dump_kinds, split_tuning_records, write
    from ..package import atomic_write, check_output, package_key
    from ..shapes import parse_input_shapes
    from ..target import parse_target

    verbose = args.verbose
    # what would fail after the compile fails before it: the target, the key, the dump kinds, the shapes,
    # the build options and the output folders
    t = target_options(args)
    parse_target(t.pop("target"), thresholds=args.target_energon_thresholds, **t)
    key = package_key(args.package_key)
    dump_kinds(args.dump_code)
    parse_input_shapes(args.input_shapes)
    build = build_options(args.pass_config, args.opt_level)
    records, database = split_tuning_records(args.tuning_records)
    check_output(args.output, "-o")
    if args.dump_offloads and args.dump_offloads != "-":
        check_output(args.dump_offloads, "--dump-offloads")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr)

    result = compile_model(args.model, model_format=args.model_format, **target_options(args),
                           input_shapes=args.input_shapes, tuning_records=records, host_database=database,
                           build=build, objective=args.objective,
                           verbose=verbose, log=say if verbose else None,
                           thresholds=args.target_energon_thresholds)
    text = None
    if args.dump_offloads:
        text = result.offloads.format() if result.offloads is not None else "energon is not in the target\n"
    written = write(result, args.output, args.dump_code, key=key)
    if text is not None:
        if args.dump_offloads == "-":
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        else:
            atomic_write(args.dump_offloads, text.encode())
            written.append(Path(args.dump_offloads))
    n_sites = result.attention_sites
    t = result.timings
    print(f"compiled {Path(args.model).name} for {result.target.describe()}: {len(result.calls)} of {n_sites} "
          f"attention site(s) offloaded; {sum(t.values()):.1f} s "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in t.items())})")
    applied = result.host_tuning
    if applied is not None:
        print(f"  {applied.tuned} of {applied.kernels} host kernel(s) scheduled from {applied.folder} (MetaSchedule), "
              f"the rest by the default schedules")
        if applied.other_records:
            print(f"  {applied.other_records} record(s) of that database were tuned for another CPU "
                  f"({', '.join(applied.other_cpus)}) and were not used for {result.target.mcpu or 'the generic CPU'}")
    if records:
        from ...executor import TUNED
        from ...tuner import read_records

        tuned = sum(c.schedule_source == TUNED for c in result.calls)
        print(f"  {tuned} of {len(result.calls)} offloaded call(s) scheduled from {records}, the "
              f"rest by the heuristic")
        cfg = result.target.config
        other = [r for r in read_records(records) if r.config_fingerprint != cfg.fingerprint.hex()]
        if other:
            names = sorted({r.config or r.config_fingerprint[:12] for r in other})
            print(f"  {len(other)} record(s) of that file were made for another machine ({', '.join(names)}) and "
                  f"were not used on {cfg.name}")
    for path in written:
        print(f"  wrote {path}")
    return 0
