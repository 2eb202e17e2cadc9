"""The model runtime: loading, warm-up, the predictor and the batcher, owned in one place.

The server builds it from the artifact that ``python -m service`` verified before binding (the model
file's bytes, checked against the manifest once), and the app only reads from it. :meth:`load` runs
off the event loop: unpickle the checked bytes, build the predictor, answer the manifest's golden rows
once (first-call costs are paid before readiness), start the batcher.
"""

from __future__ import annotations

import gc
import logging

from threadpoolctl import threadpool_limits

from artifact.trust import Verified, unpickle
from service.batching import MicroBatcher
from service.predictor import Limits, Predictor
from service.settings import ServiceSettings

log = logging.getLogger("switchyard.service")


class ModelRuntime:
    def __init__(self, settings: ServiceSettings, verified: Verified) -> None:
        self.settings = settings
        self.verified = verified
        self.manifest = verified.manifest
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher | None = None
        self.failure: str | None = None

    @property
    def loaded(self) -> bool:
        return self.predictor is not None or self.failure is not None

    def load(self) -> bool:
        """Load and warm up; True once ready. A failure is kept in :attr:`failure` and logged."""
        settings = self.settings
        try:
            threadpool_limits(settings.native_threads())
            model = unpickle(
                self.verified, allow_version_mismatch=settings.allow_version_mismatch, modules=settings.modules()
            )
            predictor = Predictor(model, self.manifest, Limits(settings.max_instances, settings.max_text_length))
            if predictor.classes != self.manifest.labels:
                raise ValueError(
                    f"the manifest's labels {self.manifest.labels} are not the model's own classes {predictor.classes}"
                )
            golden = [predictor.parse(row.input)[0] for row in self.manifest.golden]
            if golden:
                predictor.predict(golden, None)  # warm-up: first-call costs are paid before readiness
                predictor.label_counts = [0] * len(predictor.classes)
        except Exception as exc:
            self.failure = f"cannot serve {settings.model}: {exc}"
            log.error(self.failure)
            return False
        self.batcher = MicroBatcher(
            predictor.probabilities,
            max_batch_size=settings.max_batch_size if settings.batching else 1,
            max_wait_ms=settings.max_wait_ms,
            max_queue_rows=settings.max_queue_rows,
        )
        self.predictor = predictor
        # The model, the app and everything loaded so far live as long as the process: move them out
        # of the collector's reach. Otherwise every full collection walks the model's object graph
        # (the vectorizer's vocabulary among it) and stalls the loop for tens of milliseconds, which
        # was most of the concurrency-128 tail (bench/serve.py: p99 65-84 ms before, 23-25 ms after).
        gc.collect()
        gc.freeze()
        log.info(f"ready: {self.manifest.name} v{self.manifest.version} ({self.manifest.model['kind']})")
        return True

    def counts(self) -> tuple[dict[str, int], dict[str, int], int]:
        """Predictions by label for live traffic and for shadow copies, and model calls so far (read at
        scrape time)."""
        predictor, batcher = self.predictor, self.batcher
        if predictor is None or batcher is None:
            return {}, {}, 0
        live = dict(zip(predictor.classes, predictor.label_counts, strict=True))
        shadow = dict(zip(predictor.classes, predictor.shadow_counts, strict=True))
        return live, shadow, batcher.batches

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
