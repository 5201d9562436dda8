"""API schemas of uploaded datasets (separate from the ORM row)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from service.datasets.validate import DatasetKind, DatasetTarget


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    size: int
    sha256: str
    num_sequences: int
    seq_len: int
    input_size: int
    output_size: int
    kind: DatasetKind
    target: DatasetTarget
    created_at: datetime


class DatasetList(BaseModel):
    items: list[DatasetOut]
