"""What dynamic sparse attention costs in accuracy, per model and task: dense against MP-MRF settings.

Every attention of a real pretrained encoder (:mod:`.zoo`) is replaced by the MP-MRF reference
(:func:`energon_tvm.mpmrf.mpmrf_attention`, whose kept sets the simulator reproduces bit for bit) with,
per setting, one of:

* ``dense``: float attention (the model as published);
* a fixed rule and value for every layer and head (``mpmrf 0/-0.25``: the paper's mean/max rule at the
  former default; ``gap 8/4``: keep the keys whose low-bit logit estimate is within 8, then 4, logits of
  the row's best);
* ``calibrated@B``: per layer, head and round thresholds that keep a mean fraction B of every row's
  softmax mass on calibration sentences (:func:`energon_tvm.calibration.calibrate`), drawn from the
  task's training part and never from its test part.

Each task (:mod:`.tasks`) fits its head once on float embeddings of its training part and scores every
setting on the same test items, so differences to dense are paired: they are reported with the standard
error of the paired difference, which is much smaller than either metric's own.

Batches are padded to their longest sentence (a multiple of 8), not to 128: padded keys are masked either
way; ``tvmc run`` at the fixed length is the check of the deployed path (the main job).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..isa.numerics import MPMRFParams

#: the settings every model and task is scored at, besides dense and the calibrated budgets
FIXED_SETTINGS: dict[str, MPMRFParams] = {
    "mpmrf 0/-0.25": MPMRFParams.from_values("mpmrf", (0.0, -0.25)),
    "gap 6/3": MPMRFParams.from_values("gap", (6.0, 3.0)),
    "gap 8/4": MPMRFParams.from_values("gap", (8.0, 4.0)),
    "gap 12/5": MPMRFParams.from_values("gap", (12.0, 5.0)),
}
BUDGETS = (0.8, 0.9, 0.95)
#: what "close to dense" means per metric: 0.5 accuracy points, 0.01 rank correlation
TOLERANCE = {"accuracy": 0.005, "spearman": 0.01}
CALIBRATION_SENTENCES = 64


def site_name(layer: int) -> str:
    """The calibration site of layer ``layer`` in the torch path."""
    return f"layer{layer}"


class LayerAttention:
    """A transformers attention function running MP-MRF with per-layer parameters.

    Layers are told apart by their attention module, numbered in the order a forward pass first calls
    them (which is layer order). ``params`` is None (float attention), one :class:`MPMRFParams` for every
    layer, or a mapping from layer index to params. Kept and candidate pairs are tallied per round; with
    ``capture`` set, every call's Q, K, V and mask are kept as calibration samples."""

    def __init__(self):
        self.layer_of: dict[int, int] = {}
        self.params: MPMRFParams | Mapping[int, MPMRFParams] | None = None
        self.capture: dict[int, list] | None = None
        self.candidates = 0
        self.kept: list[int] = []

    def reset(self, params=None, capture: bool = False) -> None:
        self.params, self.candidates, self.kept = params, 0, []
        self.capture = {} if capture else None

    def params_for(self, layer: int) -> MPMRFParams | None:
        if self.params is None or isinstance(self.params, MPMRFParams):
            return self.params
        return self.params[layer]

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        import torch

        from ..calibration import AttentionSample
        from ..mpmrf import float_attention, mpmrf_attention

        layer = self.layer_of.setdefault(id(module), len(self.layer_of))
        q, k, v = (t.detach().to(torch.float32).numpy() for t in (query, key, value))
        mask = None
        if attention_mask is not None:
            m = attention_mask.detach()
            mask = (torch.where(m, 0.0, float("-inf")) if m.dtype == torch.bool else m.to(torch.float32)).numpy()
        if self.capture is not None:
            self.capture.setdefault(layer, []).append(AttentionSample(q, k, v, mask, scaling))
        params = self.params_for(layer)
        if params is None:
            out = float_attention(q, k, v, mask, scaling)
        else:
            res = mpmrf_attention(q, k, v, mask, params, scaling)
            out = res.output
            self.candidates += int(res.candidates.sum())
            if not self.kept:
                self.kept = [0] * len(res.kept)
            for i, kept in enumerate(res.kept):
                self.kept[i] += int(kept.sum())
        return torch.from_numpy(out).transpose(1, 2).contiguous(), None

    def ratios(self) -> list[float]:
        return [k / self.candidates if self.candidates else 0.0 for k in self.kept]


@dataclass(frozen=True)
class SettingResult:
    """One setting on one model and task: kept ratio per round, the task metric with its standard error,
    and the paired difference to dense with its standard error."""

    setting: str
    kept: tuple[float, ...]
    metric: float
    se: float
    diff: float
    diff_se: float
    seconds: float
    flagged_heads: int = 0


@dataclass(frozen=True)
class TaskResult:
    model: str
    task: str
    metric_name: str
    n_train: int
    n_test: int
    settings: tuple[SettingResult, ...]
    calibration_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "metric": self.metric_name, "n_train": self.n_train,
                "n_test": self.n_test, "calibration_seconds": self.calibration_seconds, "extra": self.extra,
                "settings": [vars(s) | {"kept": list(s.kept)} for s in self.settings]}

    @classmethod
    def from_dict(cls, d: dict) -> TaskResult:
        settings = tuple(SettingResult(**(s | {"kept": tuple(s["kept"])})) for s in d["settings"])
        return cls(d["model"], d["task"], d["metric"], d["n_train"], d["n_test"], settings,
                   d.get("calibration_seconds", 0.0), d.get("extra", {}))


def calibration_samples(embed: Callable[[Sequence[str]], np.ndarray], hook: LayerAttention,
                        texts: Sequence[str]) -> dict[str, list]:
    """Every layer's attention inputs on ``texts`` (float attention), by calibration site."""
    hook.reset(None, capture=True)
    embed(texts)
    samples = {site_name(layer): calls for layer, calls in sorted(hook.capture.items())}
    hook.reset(None)
    return samples


def evaluate_model(model_name: str, task_names: Sequence[str], *, budgets: Sequence[float] = BUDGETS,
                   fixed: Mapping[str, MPMRFParams] = FIXED_SETTINGS, rule: str = "gap", seed: int = 0,
                   n_test: int | None = None, n_calibration: int = CALIBRATION_SENTENCES, batch: int = 64,
                   progress: bool = True, on_result: Callable[[TaskResult], None] | None = None
                   ) -> list[TaskResult]:
    """Score ``model_name`` on every task of ``task_names`` at dense, every ``fixed`` setting and the
    thresholds calibrated to every budget of ``budgets`` (calibrated once per task, on its training part)."""
    from ..calibration import calibrate
    from . import tasks, zoo

    hook = LayerAttention()
    model = zoo.load_model(model_name, attention=hook)

    def embed(texts, label=None):
        return zoo.embed(model_name, model, texts, batch=batch, progress=label if progress else None)

    results = []
    for task_name in task_names:
        spec = tasks.task_spec(task_name)
        data = tasks.load_task(task_name, seed=seed)
        test_texts, test_y = list(data.test_texts), np.asarray(data.test_targets)
        if n_test is not None:
            test_texts, test_y = test_texts[:n_test], test_y[:n_test]
        t0 = time.perf_counter()
        hook.reset(None)
        head = tasks.fit_head(spec, embed(data.train_texts, f"{model_name} {task_name} train"), data.train_targets)
        dense = tasks.evaluate(head, embed(test_texts, f"{model_name} {task_name} dense"), test_y)
        rows = [SettingResult("dense", (), dense.metric, dense.se, 0.0, 0.0, time.perf_counter() - t0)]
        say = print if progress else (lambda *_a, **_k: None)
        say(f"{model_name} / {task_name}: dense {spec.metric} {dense.metric:.4f} +- {dense.se:.4f} "
            f"(n = {len(test_y)}) [{rows[0].seconds:.0f} s]", flush=True)

        calibrations, cal_seconds, samples = {}, 0.0, {}
        if budgets:
            rng = np.random.default_rng(seed + 1)
            cal_texts = [data.train_texts[i] for i in rng.choice(len(data.train_texts), n_calibration, replace=False)]
            t0 = time.perf_counter()
            samples = calibration_samples(lambda t: embed(t), hook, cal_texts)
            calibrations = {b: calibrate(samples, rule=rule, budget=b) for b in budgets}
            cal_seconds = time.perf_counter() - t0
            say(f"  calibrated {len(samples)} layers on {n_calibration} training sentences at budgets "
                f"{', '.join(f'{b:g}' for b in budgets)} [{cal_seconds:.0f} s]", flush=True)

        settings = dict(fixed)
        for b, cal in calibrations.items():
            settings[f"calibrated@{b:g}"] = {layer: cal.params_for(site_name(layer)) for layer in range(len(samples))}
        for name, params in settings.items():
            t0 = time.perf_counter()
            hook.reset(params)
            score = tasks.evaluate(head, embed(test_texts, f"{model_name} {task_name} {name}"), test_y)
            diff, diff_se = tasks.paired_difference(score, dense)
            flagged = 0
            if name.startswith("calibrated@"):
                flagged = sum(len(s.flagged) for s in calibrations[float(name.split("@")[1])].sites)
            rows.append(SettingResult(name, tuple(hook.ratios()), score.metric, score.se, diff, diff_se,
                                      time.perf_counter() - t0, flagged))
            r = rows[-1]
            say(f"  {name:16s} kept {' / '.join(f'{k:.3f}' for k in r.kept)}  {spec.metric} {r.metric:.4f} "
                f"+- {r.se:.4f}  vs dense {r.diff:+.4f} +- {r.diff_se:.4f}  [{r.seconds:.0f} s]", flush=True)
        result = TaskResult(model_name, task_name, spec.metric, len(data.train_texts), len(test_y), tuple(rows),
                            cal_seconds)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _setting_order(name: str) -> tuple:
    """dense first, then the fixed settings (in :data:`FIXED_SETTINGS` order, others by name), then the
    calibrated budgets, loosest first."""
    if name == "dense":
        return (0, 0.0, "")
    if name.startswith("calibrated@"):
        return (2, float(name.split("@", 1)[1]), "")
    fixed = list(FIXED_SETTINGS)
    return (1, float(fixed.index(name)) if name in fixed else float(len(fixed)), name)


def merge(results: Sequence[TaskResult]) -> list[TaskResult]:
    """Runs of one protocol merged per model and task (a later run's setting replaces an earlier one of
    the same name): every run must have scored the same test items, so its dense baseline must be the
    same, else the paired differences would not compare."""
    from ..isa.errors import EnergonError

    merged: dict[tuple[str, str], TaskResult] = {}
    for r in results:
        key = (r.model, r.task)
        if key not in merged:
            merged[key] = r
            continue
        old = merged[key]
        dense_old = next(s for s in old.settings if s.setting == "dense")
        dense_new = next(s for s in r.settings if s.setting == "dense")
        if (old.n_test, old.n_train, dense_old.metric) != (r.n_test, r.n_train, dense_new.metric):
            raise EnergonError(f"{r.model} / {r.task}: runs differ in test items or dense baseline "
                               f"(n_test {old.n_test} vs {r.n_test}, dense {dense_old.metric:.6f} vs "
                               f"{dense_new.metric:.6f}): they cannot be merged")
        settings = {s.setting: s for s in old.settings} | {s.setting: s for s in r.settings}
        merged[key] = TaskResult(r.model, r.task, r.metric_name, r.n_train, r.n_test,
                                 tuple(sorted(settings.values(), key=lambda s: _setting_order(s.setting))),
                                 max(old.calibration_seconds, r.calibration_seconds), old.extra | r.extra)
    return list(merged.values())


def markdown(results: Sequence[TaskResult]) -> str:
    """One table per model x task: setting, kept per round, metric +- SE, paired difference to dense."""
    out = []
    for r in results:
        scale = 100.0 if r.metric_name == "accuracy" else 1.0
        unit = "points" if r.metric_name == "accuracy" else ""
        out += [f"**{r.model}, {r.task}** ({r.metric_name}; head fit on {r.n_train} float embeddings, "
                f"{r.n_test} test items; calibration {r.calibration_seconds:.0f} s)", "",
                f"| setting | kept after r1 | kept after r2 | {r.metric_name} | SE | vs dense {unit} | SE of diff |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for s in r.settings:
            kept = [f"{k:.3f}" for k in s.kept] + [""] * (2 - len(s.kept))
            out.append(f"| {s.setting} | {kept[0] or '1'} | {kept[1] or '1'} | {scale * s.metric:.2f} "
                       f"| {scale * s.se:.2f} | {scale * s.diff:+.2f} | {scale * s.diff_se:.2f} |"
                       if scale == 100.0 else
                       f"| {s.setting} | {kept[0] or '1'} | {kept[1] or '1'} | {s.metric:.4f} | {s.se:.4f} "
                       f"| {s.diff:+.4f} | {s.diff_se:.4f} |")
        out.append("")
    return "\n".join(out)


def plot(results: Sequence[TaskResult], path) -> None:
    """Per model, every setting's paired change against dense in units of the task's tolerance
    (:data:`TOLERANCE`: 0.5 accuracy points, 0.01 Spearman) over the final kept ratio, with its standard
    error; the band is "as good as dense"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.model for r in results})
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for n, r in enumerate(sorted((r for r in results if r.model == model), key=lambda r: r.task)):
            tol = TOLERANCE[r.metric_name]
            pts = sorted((s for s in r.settings if s.kept), key=lambda s: s.kept[-1])
            cal = [s for s in pts if s.setting.startswith("calibrated")]
            line = ax.errorbar([s.kept[-1] for s in cal], [s.diff / tol for s in cal],
                               yerr=[s.diff_se / tol for s in cal], fmt="o-", capsize=2,
                               label=f"{r.task}: calibrated")
            fixed = [s for s in pts if not s.setting.startswith("calibrated")]
            ax.errorbar([s.kept[-1] for s in fixed], [s.diff / tol for s in fixed],
                        yerr=[s.diff_se / tol for s in fixed], fmt="s", capsize=2, mfc="none",
                        color=line[0].get_color(), label=f"{r.task}: fixed rules")
            for s in pts:
                ax.annotate(s.setting.replace("calibrated@", "@"), (s.kept[-1], s.diff / tol), fontsize=6,
                            xytext=(3, 3 - 9 * (n % 2)), textcoords="offset points")
        ax.axhline(0, color="k", lw=1)
        ax.axhspan(-1, 1, color="k", alpha=0.07, label="within tolerance of dense")
        ax.set_xlabel("kept ratio after the last round (kept / candidate pairs)")
        ax.set_ylabel("change vs dense / tolerance (0.5 points; 0.01 Spearman)")
        ax.set_title(model)
        ax.legend(fontsize=6, loc="lower right")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
