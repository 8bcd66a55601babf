"""What a training run leaves next to the model: metrics.json, plots and a model card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from intentd_train.settings import TrainConfig

log = logging.getLogger(__name__)

CONFUSION_PNG = "confusion_matrix.png"
CURVE_PNG = "learning_curve.png"
# Below this many held-out clips per intent the card says the accuracy is too few to judge by
# (a 5 % split of the demo corpus holds out about ten clips in all).
MIN_JUDGED_CLIPS_PER_INTENT = 10


def write_all(
    *,
    config: TrainConfig,
    names: list[str],
    evaluations: dict[str, dict[str, np.ndarray]],
    split_definition: dict[str, object],
    log_history: list[dict[str, Any]],
    train_time_s: float,
    n_train: int,
    n_params: int,
) -> dict[str, Any]:
    """Write metrics.json, the two plots and README.md into the output folder."""
    from intentd_train.recipe import describe

    out = config.output_dir
    test = evaluations["test"]
    metrics: dict[str, Any] = {
        "accuracy": _accuracy(test),
        "per_intent_accuracy": _per_intent(test, names),
        "test_clips": len(test["true"]),
        "train_clips": n_train,
        "diagnostics": {
            name: {"accuracy": _accuracy(ev), "clips": len(ev["true"])}
            for name, ev in evaluations.items()
            if name != "test"
        },
        "split": split_definition,
        "train_time_s": round(train_time_s, 1),
        # What ran: with a time budget, --epochs is only an upper bound.
        "updates": int(max((e.get("step", 0) for e in log_history), default=0)),
        "epochs_run": round(float(max((e.get("epoch", 0) for e in log_history), default=0)), 2),
        "seed": config.seed,
        "parameters": n_params,
        "labels": names,
        "config": describe(config),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot_confusion(test, names, out / CONFUSION_PNG)
    _plot_curve(log_history, out / CURVE_PNG)
    (out / "README.md").write_text(_model_card(metrics, config))
    return metrics


def _accuracy(ev: dict[str, np.ndarray]) -> float:
    return float(np.mean(ev["pred"] == ev["true"])) if len(ev["true"]) else 0.0


def _per_intent(ev: dict[str, np.ndarray], names: list[str]) -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for i, name in enumerate(names):
        mask = ev["true"] == i
        result[name] = round(float(np.mean(ev["pred"][mask] == i)), 4) if mask.any() else None
    return result


def _confusion(ev: dict[str, np.ndarray], n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=int)
    for t, p in zip(ev["true"], ev["pred"], strict=True):
        m[int(t), int(p)] += 1
    return m


def _plot_confusion(ev: dict[str, np.ndarray], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = _confusion(ev, len(names))
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 0.8 + 0.5 * len(names)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for (i, j), v in np.ndenumerate(m):
        if v:
            color = "white" if v > m.max() / 2 else "black"
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"held-out confusion (accuracy {_accuracy(ev):.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["epoch"], h["loss"]) for h in history if "loss" in h and "epoch" in h]
    evals = [(h["epoch"], h["eval_loss"], h.get("eval_accuracy")) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", alpha=0.7)
    if evals:
        ax.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="held-out loss")
        ax2 = ax.twinx()
        ax2.plot([e[0] for e in evals], [e[2] for e in evals], "s-", color="tab:green")
        ax2.set_ylabel("held-out accuracy", color="tab:green")
        ax2.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.legend(loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _model_card(metrics: dict[str, Any], config: TrainConfig) -> str:
    rows = "\n".join(
        f"| {name} | {'-' if acc is None else f'{acc:.3f}'} |"
        for name, acc in metrics["per_intent_accuracy"].items()
    )
    diag = "\n".join(
        f"- {name.replace('_', ' ')}: {d['accuracy']:.3f} on {d['clips']} clips"
        for name, d in metrics["diagnostics"].items()
    )
    source = config.data_dir or f"{config.dataset} ({config.dataset_config or 'default'})"
    base = f"from scratch ({config.from_config})" if config.from_config else config.base_model
    caution = ""
    if metrics["test_clips"] < MIN_JUDGED_CLIPS_PER_INTENT * len(metrics["labels"]):
        caution = (
            f"; too few to judge the model by (under {MIN_JUDGED_CLIPS_PER_INTENT} per intent): "
            "measure it on a held-out set of your own"
        )
    tta = ""
    if config.tta_speeds is not None:
        speeds = ", ".join(f"{s:g}" for s in config.tta_speeds)
        tta = (
            f"\nintentd classifies each utterance at {speeds} times the speed and averages the\n"
            "scores (`intentd_tta_speeds` in config.json); the accuracies here are at speed 1 only.\n"
        )
    return f"""---
library_name: transformers
pipeline_tag: audio-classification
tags: [intentd, wav2vec2, intent-classification]
---
# intentd intent classifier

Wav2Vec2 audio classifier for {len(metrics["labels"])} spoken banking intents, trained with
`intentd train`{f" --preset {config.preset}" if config.preset else ""}.

- Model: {base}; {metrics["parameters"] / 1e6:.2f} M parameters
- Data: {source}; {metrics["train_clips"]} training clips
- Held-out split: {metrics["split"].get("kind")}
- Held-out accuracy: **{metrics["accuracy"]:.3f}** on {metrics["test_clips"]} clips{caution}
- Training: {metrics["epochs_run"]:g} epochs ({metrics["updates"]} updates), lr {config.learning_rate:g},
  batch {config.batch_size}, clips cut at {config.max_length_s:g} s, augmentation
  {"on" if config.augment else "off"}, transcript CTC weight {config.ctc_weight or 0:g},
  {metrics["train_time_s"]:.0f} s, seed {config.seed}

Input: 16 kHz float32 mono (intentd resamples every source to 16 kHz with the same code
used in training). Load with `AutoFeatureExtractor` and `AutoModelForAudioClassification`.
{tta}
| intent | held-out accuracy |
|---|---|
{rows}

Other held-out views:
{diag or "- none"}

Limits: scores are measured on the held-out part of the training distribution; see
`metrics.json` for the exact split. Plots: `{CONFUSION_PNG}`, `{CURVE_PNG}`.
"""
