"""The recipe behind `intentd train` (flags: arguments.py): Hugging Face audio classification,
offline-ready and CPU-sized."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from intentd_train.settings import TARGET_RATE_HZ, TrainConfig

log = logging.getLogger(__name__)

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "accuracy.py"
LOGGING_STEPS = 10
LAST_STEP_DIR = "last-step"  # with --average-decay: the last step's weights, beside the average


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the whole recipe; returns the metrics written to `<output>/metrics.json`."""
    import torch
    from transformers import TrainingArguments, set_seed

    from intentd.model import TRAINED_RATE_KEY, TTA_SPEEDS_KEY
    from intentd_train import data, modeling, report

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    set_seed(config.seed)
    if config.generate_corpus_seed is not None and config.data_dir is not None:
        _ensure_corpus(config.data_dir, config.generate_corpus_seed)

    raw, label_column = data.load_labelled(config)
    names: list[str] = raw.features[label_column].names
    extractor, model, names, raw = modeling.build(config, names, raw, label_column)
    if not torch.cuda.is_available() and modeling.frame_waveform_conv(model):
        log.info("waveform conv computed as frames x kernel (a faster CPU gradient)")
    parts = data.split(raw, label_column, config)
    log.info("split: %s", {k: v for k, v in parts.definition.items() if k != "test_phrasings"})
    has_text = data.text_column_of(raw) is not None
    ctc_weight = _ctc_weight(config) if has_text else 0.0
    words_weight = config.words_weight if has_text else 0.0
    # metrics.json shows what ran
    config = dataclasses.replace(config, ctc_weight=ctc_weight, words_weight=words_weight)
    use_ctc = ctc_weight > 0 or words_weight > 0
    decoded_train = data.decode(parts.train, config.max_length_s, "decoding training clips")
    # The daemon band-limits wider input to this (intentd.model.TRAINED_RATE_KEY): a model
    # trained on 8 kHz clips, like MInDS-14 or our corpus, has never heard 4-8 kHz.
    trained_rate_hz = int(max(decoded_train[data.SOURCE_RATE_COLUMN]))
    train_ds = data.as_model_inputs(decoded_train, label_column, config.ctc_units if use_ctc else None)
    test_ds = data.as_model_inputs(
        data.decode(parts.test, config.max_length_s, "decoding held-out clips"), label_column
    )
    augmenter = None
    if config.augment is not None:
        from intentd_train.augment import AUGMENT_COLUMN, Augmenter

        augmenter = Augmenter(config.augment, config.seed)
        # The collator augments the rows carrying this flag: training rows, never held-out ones.
        train_ds = train_ds.add_column(AUGMENT_COLUMN, [True] * len(train_ds))
    # Numpy rows: a python-list batch cost more than the model's step, and a dataset transform
    # ran on every row again each epoch when the length-grouped sampler read `length`.
    train_ds = train_ds.with_format("numpy")

    from transformers import Trainer

    from intentd_train.augment import Collator

    collator = Collator(extractor, config.max_length_s, augmenter)
    args = TrainingArguments(
        output_dir=str(config.output_dir),
        eval_strategy="epoch",
        save_strategy="no",
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=LOGGING_STEPS,
        seed=config.seed,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        report_to="none",
        push_to_hub=config.push_to_hub and not use_ctc,
        hub_model_id=config.hub_model_id,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    classifier = model
    if use_ctc:
        from intentd_train.transcript import WithTranscriptHead

        log.info("auxiliary transcript CTC loss in %s, weight %g", config.ctc_units, ctc_weight)
        if words_weight > 0:
            log.info("auxiliary word-bag loss on the pooled vector, weight %g", words_weight)
        model = WithTranscriptHead(classifier, ctc_weight, config.ctc_units, words_weight)
    optimizers: tuple[Any, Any] = (None, None)
    callbacks = []
    if config.time_budget_min is not None:
        from intentd_train.budget import TimeBudget

        budget = TimeBudget(config.time_budget_min * 60.0, config.warmup_ratio)
        optimizers = budget.optimizers(model, config.learning_rate, config.weight_decay)
        callbacks.append(budget)
    if augmenter is not None:
        from intentd_train.augment import AugmentRamp

        fraction = budget.fraction if config.time_budget_min is not None else None
        callbacks.append(AugmentRamp(augmenter, fraction))
    average = None
    if config.average_decay > 0:
        from intentd_train.averaging import WeightAverage

        average = WeightAverage(classifier, config.average_decay)
        callbacks.append(average)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=test_ds,
        data_collator=collator,
        processing_class=extractor,
        compute_metrics=_accuracy_fn(),
        optimizers=optimizers,
        callbacks=callbacks,
    )
    t0 = time.monotonic()
    trainer.train()
    train_time_s = time.monotonic() - t0

    config.output_dir.mkdir(parents=True, exist_ok=True)
    # The classifier alone: the CTC head was a training aid.
    setattr(classifier.config, TRAINED_RATE_KEY, trained_rate_hz)
    if config.tta_speeds is not None:
        setattr(classifier.config, TTA_SPEEDS_KEY, list(config.tta_speeds))
    evaluations = {}
    if average is not None:
        # The last step's weights, kept and scored beside the average the run saves.
        classifier.save_pretrained(str(config.output_dir / LAST_STEP_DIR))
        extractor.save_pretrained(str(config.output_dir / LAST_STEP_DIR))
        evaluations[LAST_STEP_DIR] = _predict(trainer, test_ds)
        average.load_into_module()
    classifier.save_pretrained(str(config.output_dir))
    extractor.save_pretrained(str(config.output_dir))
    evaluations["test"] = _predict(trainer, test_ds)
    for name, ds in parts.diagnostics.items():
        decoded = data.decode(ds, config.max_length_s, f"decoding {name} clips")
        evaluations[name] = _predict(trainer, data.as_model_inputs(decoded, label_column))
    metrics = report.write_all(
        config=config,
        names=names,
        evaluations=evaluations,
        split_definition=parts.definition,
        log_history=trainer.state.log_history,
        train_time_s=train_time_s,
        n_train=len(train_ds),
        n_params=sum(p.numel() for p in classifier.parameters()),
    )
    if config.push_to_hub and model is classifier:
        trainer.push_to_hub()
    elif config.push_to_hub:
        repo = config.hub_model_id or config.output_dir.name
        classifier.push_to_hub(repo)
        extractor.push_to_hub(repo)
    return metrics


def _ctc_weight(config: TrainConfig) -> float:
    if config.ctc_weight is not None:
        return config.ctc_weight
    return 1.0 if config.from_config is not None else 0.0


def _ensure_corpus(data_dir: Path, seed: int) -> None:
    if (data_dir / "metadata.csv").is_file():
        return
    from intentd_train.corpus import build_corpus

    log.info("generating the synthetic corpus in %s (seed %d)", data_dir, seed)
    build_corpus(data_dir, seed)


def _accuracy_fn() -> Any:
    import evaluate

    metric = evaluate.load(str(METRIC_PATH))

    def compute(eval_pred: Any) -> dict[str, float]:
        preds = np.argmax(eval_pred.predictions, axis=-1)
        return metric.compute(predictions=preds, references=eval_pred.label_ids)

    return compute


def _predict(trainer: Any, ds: Any) -> dict[str, np.ndarray]:
    out = trainer.predict(ds)
    return {"pred": np.argmax(out.predictions, axis=-1), "true": np.asarray(out.label_ids)}


def describe(config: TrainConfig) -> dict[str, Any]:
    """The config as JSON-ready values, for metrics.json and the model card."""
    d = dataclasses.asdict(config)
    return json.loads(json.dumps(d, default=str))


__all__ = ["LAST_STEP_DIR", "TARGET_RATE_HZ", "describe", "train"]
