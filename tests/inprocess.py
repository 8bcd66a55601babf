"""An in-process pipeline run to the end of its source, for tests that need the runner but no daemon."""

from __future__ import annotations

from intentd.config import Config
from intentd.model import Classifier
from intentd.notify import Notifier
from intentd.runner import Pipeline
from intentd.sources import Source
from intentd_client.protocol import IntentEvent


def run_to_end(cfg: Config, classifier: Classifier, source: Source) -> tuple[Pipeline, list[IntentEvent]]:
    """Open `source`, run the pipeline (no socket) until it is done; the pipeline and its events."""
    events: list[IntentEvent] = []
    source.open()
    pipe = Pipeline(cfg, classifier, [source], on_intent=events.append, publish=False)
    pipe.start()
    pipe.supervise(Notifier(None))
    assert pipe.error is None
    return pipe, events
