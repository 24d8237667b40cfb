"""The restricted unpickler of DCP's ``.metadata`` (utils/sharded_checkpoint.py): it builds DCP's metadata as every
supported Python writes it, and nothing else."""
from __future__ import annotations

import collections
import io
import os
import pickle

import pytest
import torch
from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING, TensorProperties

from utils.sharded_checkpoint import _MetadataUnpickler


class _GetattrPickler(pickle.Pickler):
    """Pickles Enum members as ``getattr(cls, name)``, as Python 3.11.0-3.11.3 do (Debian 12's 3.11.2 among them),
    and other objects through the reduction a test gives."""

    def __init__(self, file, extra: dict | None = None):
        super().__init__(file, protocol=4)
        self.extra = extra or {}

    def reducer_override(self, obj):
        if id(obj) in self.extra:
            return self.extra[id(obj)]
        if isinstance(obj, _MEM_FORMAT_ENCODING):
            return getattr, (type(obj), obj.name)
        return NotImplemented


def _dumps(obj, extra: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    _GetattrPickler(buffer, extra).dump(obj)
    return buffer.getvalue()


def _loads(data: bytes):
    return _MetadataUnpickler(io.BytesIO(data)).load()


def test_dcp_enum_members_pickled_through_getattr_load():
    properties = TensorProperties(dtype=torch.float32, layout=torch.strided, requires_grad=False,
                                  memory_format=torch.contiguous_format, pin_memory=False)
    data = _dumps(properties)
    assert b"getattr" in data and b"_MEM_FORMAT_ENCODING" in data
    loaded = _loads(data)
    assert loaded.memory_format == torch.contiguous_format and loaded.dtype == torch.float32


@pytest.mark.parametrize("target, name", [(collections.OrderedDict, "__class__"), (_MEM_FORMAT_ENCODING, "mro"),
                                          (_MEM_FORMAT_ENCODING, "__class__")])
def test_getattr_of_anything_but_a_dcp_enum_member_is_refused(target, name):
    marker = object()
    data = _dumps([marker], extra={id(marker): (getattr, (target, name))})
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        _loads(data)


def test_other_globals_are_refused():
    marker = object()
    data = _dumps([marker], extra={id(marker): (os.system, ("true",))})
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        _loads(data)
