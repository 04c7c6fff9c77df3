"""What decoding an image gives, whichever decoder made it (images.py for Pillow formats,
dicom.py for DICOM): the pixels, their metadata, and the error that names a bad file; and what
a decoder reads: a file by its path, or a file's bytes held in memory (:class:`EncodedFile`)."""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PathLike = str | os.PathLike


@dataclass(frozen=True)
class EncodedFile:
    """The bytes of an image file held in memory (e.g. the payload of a request), decoded as the
    file would be. ``name`` stands for the path in messages ("image 0 of request 7"). It has no
    file name, hence no extension: the format is told by the content."""

    data: bytes = field(repr=False)
    name: str

    suffix = ""  # what a decoder would read from a path's extension

    def open(self) -> io.BytesIO:
        """A new stream over the bytes (each reader gets its own position)."""
        return io.BytesIO(self.data)

    def __str__(self) -> str:
        return self.name


#: what the decoders read: a path, or a file's bytes in memory
Source = PathLike | EncodedFile


def as_source(source: Source) -> Path | EncodedFile:
    return source if isinstance(source, EncodedFile) else Path(source)


def readable(source: Path | EncodedFile):
    """What Pillow's and pydicom's readers take: the path itself, or a stream over the bytes."""
    return source.open() if isinstance(source, EncodedFile) else source


class DataError(ValueError):
    """A data file or folder is missing, unreadable or inconsistent. The message is
    "PATH: PROBLEM"; ``.path`` and ``.problem`` hold the parts (None after the error crossed a
    process boundary, e.g. from a DataLoader worker, where only the message survives). For bytes
    in memory, ``.path`` is the :class:`EncodedFile` and PATH its name."""

    def __init__(self, message: str, path: Source | None = None, problem: str | None = None):
        super().__init__(message)
        self.path = as_source(path) if path is not None else None
        self.problem = problem


def _err(path: Source, problem: str) -> DataError:
    return DataError(f"{path}: {problem}", path, problem)


@dataclass(frozen=True)
class ImageMeta:
    """What is known about a decoded image besides its pixels (JSON-ready via :meth:`to_dict`).

    ``rows`` x ``columns``: the native size before resizing. ``pixel_spacing_mm``: (row, column)
    spacing from DICOM Pixel Spacing, else Imager Pixel Spacing (``pixel_spacing_source`` says
    which); None for other formats. ``normalisation``: how stored values became [0, 1].
    ``warnings``: accepted-with-a-warning conditions (e.g. a DICOM Modality other than CR/DX).
    """

    format: str
    rows: int
    columns: int
    normalisation: str
    photometric_interpretation: str | None = None
    modality: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    pixel_spacing_source: str | None = None
    view_position: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    transfer_syntax_uid: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_dicom(self) -> bool:
        return self.format == "DICOM"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pixel_spacing_mm"] = list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None
        d["warnings"] = list(self.warnings)
        return d


@dataclass
class DecodedImage:
    """``pixels``: float32 [size, size] in [0, 1], the network's input; ``meta``: see ImageMeta."""

    pixels: np.ndarray
    meta: ImageMeta
