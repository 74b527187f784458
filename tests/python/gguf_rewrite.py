"""A copy of a GGUF file with some metadata and some tensors' types changed: malformed models for the
loader's tests, built from the default model so that everything else stays valid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter


def _field_value(field):
    """(value, element type of an array or None) of a reader field, as GGUFWriter.add_key_value takes it."""
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], sub
        return [field.parts[i].tolist()[0] for i in field.data], sub
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]), None
    return field.parts[field.data[0]].tolist()[0], None


def rewrite_gguf(src: Path, out: Path, metadata: dict | None = None,
                 tensor_types: dict[str, GGMLQuantizationType] | None = None) -> Path:
    """metadata: key -> (GGUFValueType, value) to set, or None to drop the key. tensor_types: tensor
    name -> another ggml type; the tensor keeps its shape and gets zero bytes of that type."""
    metadata = dict(metadata or {})
    tensor_types = tensor_types or {}
    reader = GGUFReader(str(src))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = GGUFWriter(str(out), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # the writer writes these itself
        if name in metadata:
            spec = metadata.pop(name)
            if spec is not None:
                writer.add_key_value(name, spec[1], spec[0])
            continue
        value, sub = _field_value(field)
        writer.add_key_value(name, value, field.types[0], sub_type=sub)
    for name, spec in metadata.items():  # keys the source lacks
        if spec is not None:
            writer.add_key_value(name, spec[1], spec[0])
    datas = []
    for t in reader.tensors:
        if t.name in tensor_types:
            qtype = tensor_types[t.name]
            block, size = GGML_QUANT_SIZES[qtype]
            shape = [int(n) for n in reversed(t.shape.tolist())]  # rows first, as numpy
            shape[-1] = shape[-1] // block * size  # bytes per row
            data = np.zeros(shape, dtype=np.uint8)
            writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, raw_dtype=qtype)
        else:
            data = t.data
            writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, raw_dtype=t.tensor_type)
        datas.append(data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in datas:
        writer.write_tensor_data(data)
    writer.close()
    return out
