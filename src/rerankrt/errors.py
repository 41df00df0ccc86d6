"""Errors whose message is meant for the user; the server and CLI show them as they are."""


class RerankrtError(Exception):
    """Base class: a failure with a message that says what is wrong and what to do."""


class UnsupportedModelError(RerankrtError):
    """The model's architecture is not one of the supported reranker families."""


class ArtifactError(RerankrtError):
    """An artifact folder is missing, incomplete, tampered with or from an incompatible version."""


class ExportError(RerankrtError):
    """Export failed, including a parity check that did not hold."""


class BackendUnavailableError(RerankrtError):
    """A backend cannot run here (library missing, no engine, no GPU, no weights)."""


class InputError(RerankrtError):
    """A client's request is invalid; `field` names the offending part of the request."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
