"""intentd: a streaming spoken-intent daemon (capture → VAD → Wav2Vec2 classifier → ZeroMQ)."""

__version__ = "0.1.0"
