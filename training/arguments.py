"""`intentd train`'s command line: its flags, turned into one validated TrainConfig at the edge."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from intentd.errors import IntentdError
from intentd_train.recipe import LAST_STEP_DIR, train
from intentd_train.settings import (
    ARCHITECTURES,
    CTC_UNITS,
    DEFAULT_BASE_MODEL,
    PRESETS,
    AugmentConfig,
    TrainConfig,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `intentd train`."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune or train a Wav2Vec2 intent classifier (HF audio-classification recipe)",
        description=(
            "Train an intent classifier. Data: --data DIR (audiofolder: DIR/<intent>/*.wav, "
            "optional metadata.csv with voice and phrasing_id, which makes the held-out split "
            "hold out whole voices and whole phrasings) or --dataset NAME (a Hub dataset such "
            "as PolyAI/minds14 with --dataset-config en-US). Model: --base-model (Hub id or "
            "local save_pretrained folder, fine-tuned) or --from-config SIZE (from scratch). "
            "--preset demo trains the built-in demo model on the synthetic corpus."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, help="audiofolder directory: DIR/<intent>/*.wav")
    src.add_argument("--dataset", help="Hub dataset id, e.g. PolyAI/minds14")
    p.add_argument("--dataset-config", help="Hub dataset config, e.g. en-US")
    p.add_argument("--dataset-split", help="Hub split to train and hold out from (default train)")
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--base-model",
        help=f"pretrained checkpoint to fine-tune: Hub id or local folder (default {DEFAULT_BASE_MODEL})",
    )
    model.add_argument(
        "--from-config",
        choices=sorted(ARCHITECTURES),
        help="train a Wav2Vec2 of this size from scratch instead (tiny: tests, small: demo)",
    )
    p.add_argument("--output", type=Path, help="folder for the trained model, metrics and plots")
    p.add_argument("--epochs", type=float, help="passes over the training clips (default 40)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-4; 1e-3 from scratch)")
    p.add_argument("--batch-size", type=int, help="clips per step (default 16)")
    p.add_argument(
        "--max-length-s",
        type=float,
        help="cut clips to this many seconds; batches pad to their longest clip (default 8)",
    )
    p.add_argument(
        "--freeze-feature-encoder",
        action=argparse.BooleanOptionalAction,
        help="keep the conv feature encoder fixed (default on for --base-model, off from scratch)",
    )
    p.add_argument("--seed", type=int, help="seed for the split, init and augmentation (default 0)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="speed, gain, EQ, reverb, white/pink/brown noise at 5-30 dB SNR on training clips",
    )
    p.add_argument("--mask-time-prob", type=float, help="SpecAugment time masking (default 0.05)")
    p.add_argument("--mask-feature-prob", type=float, help="SpecAugment channel masking (default 0)")
    p.add_argument(
        "--ctc-weight",
        type=float,
        help="weight of an auxiliary CTC loss on the data's transcripts (text or "
        "transcription column); the head is dropped at save (default 1 from scratch, 0 when "
        "fine-tuning)",
    )
    p.add_argument(
        "--ctc-units",
        choices=CTC_UNITS,
        help="what the CTC head spells: characters (default), or phonemes as espeak-ng reads "
        "the text in American English",
    )
    p.add_argument(
        "--words-weight",
        type=float,
        help="weight of an auxiliary loss: from the pooled vector the classifier reads, predict "
        "which words the transcript holds (a bag of words); the head is dropped at save "
        "(default 0: off)",
    )
    p.add_argument(
        "--layer-sum",
        action=argparse.BooleanOptionalAction,
        help="from scratch: the classifier reads a learnt mix of every layer (default) or, "
        "with --no-layer-sum, the last layer only",
    )
    p.add_argument(
        "--tta-speeds",
        type=_speeds,
        help="comma-separated speeds, e.g. 0.95,1,1.05: the saved model is run at each (tempo "
        "and pitch together, as the speed augmentation) and the results averaged, for every "
        "utterance the daemon classifies (default: 1 only)",
    )
    p.add_argument(
        "--average-decay",
        type=float,
        help="save an exponential moving average of the weights with this decay per update "
        f"(e.g. 0.9995) instead of the last step's, which go to OUTPUT/{LAST_STEP_DIR} "
        "(default 0: the last step's)",
    )
    p.add_argument(
        "--time-budget-min",
        type=float,
        help="stop after this many minutes of training; the learning rate decays over the "
        "budget instead of the epochs (then --epochs is only an upper bound)",
    )
    p.add_argument("--test-fraction", type=float, help="share of clips held out (default 0.2)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--push-to-hub", action="store_true", help="upload the result (needs a login)")
    p.add_argument("--hub-model-id", help="repository name for --push-to-hub")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="demo: small from-scratch model on the synthetic corpus (generated if absent) "
        "into models/demo; other flags override it",
    )
    p.add_argument("--log-level", default="info", help="debug, info (default), warning or error")
    p.set_defaults(func=run)
    return p


def _speeds(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of numbers") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Validate the flags (preset first, explicit flags over it) into a frozen TrainConfig."""
    values: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    if args.data is not None or args.dataset is not None:
        values.pop("data_dir", None)
        values.pop("generate_corpus_seed", None)
    if args.base_model is not None:
        values.pop("from_config", None)
    flags = {
        "data_dir": args.data,
        "dataset": args.dataset,
        "dataset_config": args.dataset_config,
        "dataset_split": args.dataset_split,
        "base_model": args.base_model,
        "from_config": args.from_config,
        "output_dir": args.output,
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "max_length_s": args.max_length_s,
        "freeze_feature_encoder": args.freeze_feature_encoder,
        "seed": args.seed,
        "augment": args.augment,
        "mask_time_prob": args.mask_time_prob,
        "mask_feature_prob": args.mask_feature_prob,
        "ctc_weight": args.ctc_weight,
        "ctc_units": args.ctc_units,
        "words_weight": args.words_weight,
        "layer_sum": args.layer_sum,
        "tta_speeds": args.tta_speeds,
        "average_decay": args.average_decay,
        "test_fraction": args.test_fraction,
        "time_budget_min": args.time_budget_min,
        "num_threads": args.threads,
        "hub_model_id": args.hub_model_id,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.push_to_hub:
        values["push_to_hub"] = True
    if values.get("from_config") and "learning_rate" not in values:
        values["learning_rate"] = 1e-3
    if values.get("from_config") and "freeze_feature_encoder" not in values:
        values["freeze_feature_encoder"] = False
    augment = values.pop("augment", False)
    values["augment"] = AugmentConfig() if augment else None
    if values.get("data_dir") is None and values.get("dataset") is None:
        raise IntentdError("say what to train on: --data DIR, --dataset NAME or --preset demo")
    if values.get("output_dir") is None:
        raise IntentdError("say where the model goes: --output DIR")
    if values.get("base_model") is None:
        values.pop("base_model", None)
    config = TrainConfig(preset=args.preset, **values)
    _validate(config)
    return config


def _validate(c: TrainConfig) -> None:
    from intentd.model import TTA_SPEED_RANGE  # torch: only once training is asked for

    if c.epochs <= 0 or c.learning_rate <= 0 or c.batch_size < 1:
        raise IntentdError("--epochs, --lr and --batch-size must be positive")
    if not 0.0 < c.max_length_s <= 60.0:
        raise IntentdError(f"--max-length-s {c.max_length_s} must be in (0, 60]")
    if c.time_budget_min is not None and c.time_budget_min <= 0:
        raise IntentdError(f"--time-budget-min {c.time_budget_min} must be positive")
    if not 0.0 < c.test_fraction < 1.0:
        raise IntentdError(f"--test-fraction {c.test_fraction} must be between 0 and 1")
    if c.ctc_weight is not None and c.ctc_weight < 0:
        raise IntentdError(f"--ctc-weight {c.ctc_weight} must be >= 0")
    if c.words_weight < 0:
        raise IntentdError(f"--words-weight {c.words_weight} must be >= 0")
    if not c.layer_sum and c.from_config is None:
        raise IntentdError("--no-layer-sum applies to --from-config only: a checkpoint keeps its own")
    lo, hi = TTA_SPEED_RANGE
    if c.tta_speeds is not None and not all(lo <= s <= hi for s in c.tta_speeds):
        shown = ",".join(f"{s:g}" for s in c.tta_speeds)
        raise IntentdError(f"--tta-speeds {shown}: each speed must be in [{lo}, {hi}]")
    if not 0.0 <= c.average_decay < 1.0:
        raise IntentdError(f"--average-decay {c.average_decay} must be in [0, 1)")
    if not (0.0 <= c.mask_time_prob < 1.0 and 0.0 <= c.mask_feature_prob < 1.0):
        raise IntentdError("--mask-time-prob and --mask-feature-prob must be in [0, 1)")


def run(args: argparse.Namespace) -> int:
    """`intentd train` entry: build the config, train, print where the model went."""
    level = str(getattr(args, "log_level", None) or "info").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise IntentdError(f"--log-level {level.lower()!r} must be debug, info, warning or error")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    result = train(config)
    print(
        f"saved {config.output_dir}: held-out accuracy {result['accuracy']:.3f} "
        f"on {result['test_clips']} clips, trained in {result['train_time_s']:.0f} s"
    )
    return 0


__all__ = ["add_parser", "config_from_args", "run"]
