"""What the corpus says: the 14 intents, the phrasing files, slot fillers, openers and closers.

`phrasings/<label>.txt` (shipped with the package) holds one way a customer asks for each intent
per line, with `{slot}` fields; `render` fills the slots and may add a call-centre opener or
closer. Who says it, and how it is written to disk, is `corpus.py`.
"""

from __future__ import annotations

import hashlib
import logging
import string
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from intentd.errors import IntentdError

log = logging.getLogger(__name__)

# The 14 MInDS-14 intents, in the dataset's (alphabetical) order.
INTENTS: tuple[str, ...] = (
    "abroad",
    "address",
    "app_error",
    "atm_limit",
    "balance",
    "business_loan",
    "card_issues",
    "cash_deposit",
    "direct_debit",
    "freeze",
    "high_value_payment",
    "joint_account",
    "latest_transactions",
    "pay_bill",
)

PHRASING_ID_HEX = 8  # hex digits of sha1(text) in a phrasing id

# Values for the {slot} fields in phrasing files; one is drawn per clip.
SLOTS: dict[str, tuple[str, ...]] = {
    "amount": (
        "20,000 pounds", "fifteen thousand pounds", "50,000 pounds", "10,000 dollars",
        "thirty thousand euros", "25,000 pounds", "100,000 pounds", "twelve thousand dollars",
        "8,000 pounds", "forty thousand dollars", "75,000 euros", "a quarter of a million pounds",
    ),
    "cash": (
        "500 pounds", "two hundred pounds", "1,000 pounds", "300 dollars", "800 euros",
        "a thousand dollars", "600 pounds", "two hundred and fifty pounds", "400 euros",
    ),
    "country": (
        "Spain", "France", "the United States", "Italy", "Germany", "Portugal", "Thailand",
        "Australia", "Canada", "Greece", "Mexico", "Japan", "Turkey", "Dubai", "India",
    ),
    "city": (
        "London", "Manchester", "Leeds", "Bristol", "Glasgow", "Sydney", "Boston", "Chicago",
        "Melbourne", "Birmingham", "Dublin", "Brisbane",
    ),
    "street": (
        "twelve Church Street", "forty five Park Road", "eight High Street",
        "three Station Road", "twenty one Victoria Avenue", "seven Mill Lane",
        "fifty two Elm Grove", "ninety Queen Street",
    ),
    "person": (
        "my wife", "my husband", "my partner", "my girlfriend", "my boyfriend", "my mum",
        "my dad", "my daughter", "my son", "my brother", "my sister", "my fiance",
    ),
    "business": (
        "my bakery", "my restaurant", "my small business", "my shop", "my company",
        "my cafe", "my plumbing business", "my hair salon", "my building firm", "my farm",
    ),
    "bill": (
        "electricity bill", "gas bill", "water bill", "phone bill", "internet bill",
        "council tax bill", "credit card bill", "TV licence", "mobile phone bill", "energy bill",
    ),
    "company": (
        "the gym", "my phone company", "the energy company", "Netflix", "British Gas",
        "my insurance company", "the council", "my landlord", "Vodafone", "Sky",
    ),
    "digits": ("four five six one", "two nine eight", "seven seven three zero", "one two three"),
}  # fmt: skip

# Call-centre openers and closers, added to some clips; "" (most often) adds nothing.
OPENERS: tuple[str, ...] = (
    "", "", "", "", "hi, ", "hello, ", "um, ", "hi there, ", "good morning, ", "yes hello, ",
    "hi, um, ", "hello, yeah, ", "erm, ",
)  # fmt: skip
CLOSERS: tuple[str, ...] = ("", "", "", "", " please", ", thanks", ", thank you")
_HAS_OPENER = ("hi", "hello", "um", "erm", "yes", "good")
# Openers and closers as words, longest first: two phrasings that differ only by one sound the
# same once `render` has added it, so a held-out phrasing would have a twin in training.
_OPENER_HEADS = sorted({tuple(o.replace(",", " ").split()) for o in OPENERS if o}, key=len, reverse=True)
_CLOSER_TAILS = sorted({tuple(c.replace(",", " ").split()) for c in CLOSERS if c}, key=len, reverse=True)


class CorpusError(IntentdError):
    """A corpus that cannot be built: a phrasing file missing or wrong, the output folder in use,
    a synthesizer missing or failing (defined here, below corpus.py, so both raise it)."""


@dataclass(frozen=True)
class Phrasing:
    """One way a customer says an intent; `{slot}` fields are filled per clip."""

    id: str  # "<label>-<sha1 of template>": stable under reordering of the phrasing files
    label: str
    template: str


def phrasing_id(label: str, template: str) -> str:
    """The stable id of a phrasing: its label and a hash of its whitespace-normalised text."""
    digest = hashlib.sha1(" ".join(template.split()).encode()).hexdigest()
    return f"{label}-{digest[:PHRASING_ID_HEX]}"


def spoken_core(template: str) -> str:
    """The words of `template` without case, punctuation, a leading opener or a trailing closer."""
    words = "".join(c if c.isalnum() or c in "'{}" else " " for c in template.lower()).split()
    head = next((h for h in _OPENER_HEADS if len(words) > len(h) and tuple(words[: len(h)]) == h), ())
    del words[: len(head)]
    tail = next((t for t in _CLOSER_TAILS if len(words) > len(t) and tuple(words[-len(t) :]) == t), ())
    del words[len(words) - len(tail) :]
    return " ".join(words)


def load_phrasings(
    intents: Iterable[str] = INTENTS, root: Path | None = None
) -> dict[str, tuple[Phrasing, ...]]:
    """Read `<root>/<label>.txt` (default: the files shipped with the package), checking slots and
    that no two phrasings sound the same."""
    folder = root if root is not None else resources.files("intentd_train") / "phrasings"
    out: dict[str, tuple[Phrasing, ...]] = {}
    seen: dict[str, str] = {}  # spoken core -> the phrasing that has it, across all intents
    ids: dict[str, str] = {}
    for label in intents:
        source = folder / f"{label}.txt"
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as e:
            raise CorpusError(f"no phrasings for intent {label!r}: {source} is missing") from e
        phrasings = []
        for line in lines:
            template = " ".join(line.split())
            if not template or template.startswith("#"):
                continue
            slots = {name for _, name, _, _ in string.Formatter().parse(template) if name}
            if slots - SLOTS.keys():
                raise CorpusError(f"{source}: unknown slots {sorted(slots - SLOTS.keys())}")
            core = spoken_core(template)
            if core in seen:
                raise CorpusError(
                    f"{source}: phrasing {template!r} sounds the same as {seen[core]!r} "
                    "once an opener or closer is added; reword one of them"
                )
            seen[core] = f"{label}: {template}"
            pid = phrasing_id(label, template)
            if pid in ids:
                raise CorpusError(f"{source}: phrasings {template!r} and {ids[pid]!r} share id {pid}")
            ids[pid] = template
            phrasings.append(Phrasing(pid, label, template))
        out[label] = tuple(phrasings)
    return out


def in_corpus(groups: dict[str, tuple[Phrasing, ...]]) -> list[str]:
    """The templates in `groups` that sound like a shipped corpus phrasing: an evaluation set
    must have none, or a model would be judged on what it trained on."""
    corpus = {spoken_core(p.template) for group in load_phrasings().values() for p in group}
    return [p.template for group in groups.values() for p in group if spoken_core(p.template) in corpus]


def render(template: str, rng: np.random.Generator) -> str:
    """Fill the slots and maybe add an opener/closer, drawing from `rng`."""
    text = template.format_map({name: str(rng.choice(values)) for name, values in SLOTS.items()})
    opener, closer = str(rng.choice(OPENERS)), str(rng.choice(CLOSERS))
    first_word = text.split()[0].strip(",.?!").lower()
    if first_word in _HAS_OPENER:
        opener = ""
    if opener and not (first_word == "i" or first_word.startswith("i'")):
        text = text[0].lower() + text[1:]
    text = opener + text
    if closer.startswith(", ") and text.endswith("?"):
        text += f" {closer[2:].capitalize()}."  # "...abroad? Thanks."
    elif closer:
        stem, end = (text[:-1], text[-1]) if text[-1] in "?.!" else (text, "")
        text = stem + closer + end
    return text
