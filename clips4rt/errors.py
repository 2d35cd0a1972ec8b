"""Typed errors of the runtime. Each message says what is wrong and how to fix it."""


class BundleError(ValueError):
    """The model bundle (image graph, text graph, metadata) is missing or invalid."""


class ImageError(ValueError):
    """An input image cannot be read or is not in a supported format."""


class VideoError(ValueError):
    """A video cannot be read or written (missing codec or PyAV, no frames, bad path)."""


class DownloadError(OSError):
    """A bundle could not be downloaded (network, HTTP status, interrupted transfer)."""
