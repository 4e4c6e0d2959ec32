"""The shared conformance vectors (tests/data/vectors.json), and the ways of
feeding them that every consumer must survive."""
import json
import os

VECTORS = json.load(open(os.path.join(os.path.dirname(__file__), "data", "vectors.json"),
                         encoding="utf-8"))


def vector_bytes(vector):
    """The raw input of a vector as bytes."""
    if vector.get("input") is None:
        return bytes.fromhex(vector["input_hex"])
    return vector["input"].encode("utf-8")


def vector_chunks(vector):
    """The vector's own chunking, or None."""
    if "chunks_hex" in vector:
        return [bytes.fromhex(c) for c in vector["chunks_hex"]]
    if "chunks" in vector:
        return [c.encode("utf-8") for c in vector["chunks"]]
    return None


def feeding_modes(vector):
    """(name, list of chunks) pairs: whole, byte by byte, every two-way split,
    and the vector's own chunks."""
    data = vector_bytes(vector)
    yield "whole", [data]
    yield "bytewise", [data[i:i + 1] for i in range(len(data))]
    for i in range(len(data) + 1):
        yield f"split@{i}", [data[:i], data[i:]]
    chunks = vector_chunks(vector)
    if chunks is not None:
        assert b"".join(chunks) == data, vector["name"]
        yield "chunks", chunks


def as_dict(event):
    return {"type": event.event, "data": event.data, "id": event.id, "retry": event.retry}
