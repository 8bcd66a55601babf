"""The auxiliary transcript CTC head used when training from scratch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from intentd_train.augment import Collator
from intentd_train.transcript import (
    CHARSET,
    PHONEMES,
    WORD_BUCKETS,
    WithTranscriptHead,
    encode,
    encode_all,
    vocabulary,
    word_bag,
)


def test_encode_spells_text_and_refuses_digits() -> None:
    ids = encode("Hi, what's my BALANCE?")
    assert ids is not None
    assert "".join(CHARSET[i - 1] for i in ids) == "hi what's my balance"
    assert 0 not in ids  # 0 is the CTC blank
    assert encode("send 600 pounds") is None  # spoken as words, written as digits
    assert encode(" ,. ") is None


def test_phonemes_are_espeak_ngs_reading_with_word_breaks() -> None:
    ids = encode("Check my BALANCE, please.", "phonemes")
    assert ids is not None
    spoken = "".join(vocabulary("phonemes")[i - 1] for i in ids)
    assert spoken == "tʃɛk maɪ bæləns pliːz"  # stress marks dropped, "_" separators gone
    assert ids.count(1) == 3  # token 1 is the word break in both vocabularies
    assert encode("send 600 pounds", "phonemes") is None  # the same rule as characters
    assert encode_all(["hi", "send 600"], "phonemes") == [encode("hi", "phonemes"), None]
    assert len(set(PHONEMES)) == len(PHONEMES)


def _batch(tiny_model: Path, texts: list[str | None], max_length_s: float = 10.0) -> dict:
    extractor = AutoFeatureExtractor.from_pretrained(str(tiny_model))
    rng = np.random.default_rng(0)
    features = [
        {"input_values": rng.standard_normal(16000 + 4000 * i).astype(np.float32), "label": i,
         "transcript": encode(t) if t else []}
        for i, t in enumerate(texts)
    ]  # fmt: skip
    return Collator(extractor, max_length_s)(features)


def test_ctc_adds_to_the_intent_loss_and_trains_the_head(tiny_model: Path) -> None:
    classifier = AutoModelForAudioClassification.from_pretrained(str(tiny_model))
    model = WithTranscriptHead(classifier, ctc_weight=1.0)
    batch = _batch(tiny_model, ["check my balance", None, "freeze my card"])
    assert batch["transcript_lengths"].tolist() == [16, 0, 14]
    with_text = model(**batch)
    plain = classifier(batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert with_text.loss > plain.loss
    torch.testing.assert_close(with_text.logits, plain.logits)
    with_text.loss.backward()
    assert model.ctc_head.weight.grad is not None and model.ctc_head.weight.grad.abs().sum() > 0


def test_a_phoneme_head_has_one_output_per_phoneme_and_the_blank(tiny_model: Path) -> None:
    classifier = AutoModelForAudioClassification.from_pretrained(str(tiny_model))
    model = WithTranscriptHead(classifier, ctc_weight=1.0, units="phonemes")
    assert model.ctc_head.out_features == len(PHONEMES) + 2  # + the word break and the blank
    extractor = AutoFeatureExtractor.from_pretrained(str(tiny_model))
    wave = np.random.default_rng(0).standard_normal(24000).astype(np.float32)
    features = [{"input_values": wave, "label": 0, "transcript": encode("freeze my card", "phonemes")}]
    batch = Collator(extractor, 10.0)(features)
    plain = classifier(batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > plain.loss  # the phoneme CTC term is there


def test_clips_cut_short_or_without_text_add_no_ctc(tiny_model: Path) -> None:
    classifier = AutoModelForAudioClassification.from_pretrained(str(tiny_model))
    model = WithTranscriptHead(classifier, ctc_weight=1.0)
    # Cut at 1.1 s: the 1.25 s and 1.5 s clips lose their ends and so their transcripts.
    batch = _batch(tiny_model, [None, "check my balance", "freeze my card"], max_length_s=1.1)
    assert batch["transcript_lengths"].tolist() == [0, 0, 0]
    plain = classifier(batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(model(**batch).loss, plain.loss)


def _bags(texts: list[str], units: str = "characters") -> torch.Tensor:
    ids = [encode(t, units) or [] for t in texts]
    width = max(len(i) for i in ids)
    padded = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    return word_bag(padded, torch.tensor([len(i) for i in ids]))


def test_a_word_bag_holds_each_word_once_in_any_order() -> None:
    bags = _bags(["check my balance", "my balance, check my balance", "freeze my card", "hi"])
    assert bags.shape == (4, WORD_BUCKETS)
    assert bags.sum(1).tolist() == [3, 3, 3, 1]
    torch.testing.assert_close(bags[0], bags[1])  # order and repeats do not count
    assert (bags[0] * bags[2]).sum() == 1  # "my"
    phonemes = _bags(["check my balance", "freeze my card"], "phonemes")
    assert phonemes.sum(1).tolist() == [3, 3] and (phonemes[0] * phonemes[1]).sum() == 1


def test_the_word_bag_loss_shapes_what_the_classifier_reads(tiny_model: Path) -> None:
    classifier = AutoModelForAudioClassification.from_pretrained(str(tiny_model))
    assert WithTranscriptHead(classifier, ctc_weight=1.0).words_head is None
    batch = _batch(tiny_model, ["check my balance", None, "freeze my card"])
    plain = classifier(batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    plain.loss.backward()
    intent_only = classifier.projector.weight.grad.clone()
    classifier.zero_grad()
    model = WithTranscriptHead(classifier, ctc_weight=0.0, words_weight=1.0)
    out = model(**batch)
    torch.testing.assert_close(out.logits, plain.logits)
    # Before training, each of the 4,096 buckets costs about ln 2 per clip, over its 3 words.
    assert 600 < out.loss - plain.loss < 1300
    out.loss.backward()
    assert model.words_head.weight.grad is not None and model.words_head.weight.grad.abs().sum() > 0
    # It reaches the projector, whose pooled output the intent classifier reads.
    assert not torch.allclose(classifier.projector.weight.grad, intent_only)
    assert model._pooled is None  # nothing kept between batches


def test_words_weight_flag(tmp_path: Path) -> None:
    from intentd.cli import build_parser
    from intentd.errors import IntentdError
    from intentd_train.arguments import config_from_args

    argv = ["train", "--data", str(tmp_path), "--from-config", "tiny", "--output", str(tmp_path)]
    assert config_from_args(build_parser().parse_args(argv)).words_weight == 0.0
    assert config_from_args(build_parser().parse_args([*argv, "--words-weight", "0.5"])).words_weight == 0.5
    with pytest.raises(IntentdError, match=r"--words-weight -1.0 must be >= 0"):
        config_from_args(build_parser().parse_args([*argv, "--words-weight", "-1"]))
