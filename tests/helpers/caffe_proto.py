"""Caffe's Datum and BlobProto as google.protobuf messages, built at run time (no protoc, no caffe).

An independent reference for the hand-written codec: field numbers and types are copied from
caffe.proto (BVLC/caffe src/caffe/proto/caffe.proto), proto2.
"""
from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED

DATUM = [("channels", 1, F.TYPE_INT32, OPTIONAL), ("height", 2, F.TYPE_INT32, OPTIONAL),
         ("width", 3, F.TYPE_INT32, OPTIONAL), ("data", 4, F.TYPE_BYTES, OPTIONAL),
         ("label", 5, F.TYPE_INT32, OPTIONAL), ("float_data", 6, F.TYPE_FLOAT, REPEATED),
         ("encoded", 7, F.TYPE_BOOL, OPTIONAL)]
BLOB_SHAPE = [("dim", 1, F.TYPE_INT64, REPEATED)]
BLOB_PROTO = [("num", 1, F.TYPE_INT32, OPTIONAL), ("channels", 2, F.TYPE_INT32, OPTIONAL),
              ("height", 3, F.TYPE_INT32, OPTIONAL), ("width", 4, F.TYPE_INT32, OPTIONAL),
              ("data", 5, F.TYPE_FLOAT, REPEATED), ("diff", 6, F.TYPE_FLOAT, REPEATED),
              ("shape", 7, F.TYPE_MESSAGE, OPTIONAL), ("double_data", 8, F.TYPE_DOUBLE, REPEATED),
              ("double_diff", 9, F.TYPE_DOUBLE, REPEATED)]


def _add_message(fdp, name: str, fields) -> None:
    msg = fdp.message_type.add(name=name)
    for field, number, kind, label in fields:
        f = msg.field.add(name=field, number=number, type=kind, label=label)
        if kind == F.TYPE_MESSAGE:
            f.type_name = ".caffe.BlobShape"
        if label == REPEATED and field in ("dim", "data", "diff", "double_data", "double_diff") and name != "Datum":
            f.options.packed = True  # caffe.proto: [packed = true]


@functools.cache
def _classes():
    fdp = descriptor_pb2.FileDescriptorProto(name="alexnet_pipe_test_caffe.proto", package="caffe", syntax="proto2")
    _add_message(fdp, "Datum", DATUM)
    _add_message(fdp, "BlobShape", BLOB_SHAPE)
    _add_message(fdp, "BlobProto", BLOB_PROTO)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
            for name in ("Datum", "BlobProto")}


def datum_class():
    return _classes()["Datum"]


def blob_proto_class():
    return _classes()["BlobProto"]
