"""The data dir's format: Caffe Datum records in LMDB shards, their manifest, keys, checksums and statistics.

Every stage above reads shards through this wing; `from alexnet_pipe.shards import Datum, shard_dirs` keeps working.
"""
from alexnet_pipe.shards.format import (FORMAT_VERSION, SHARD_STATS, SHARD_META, KEY_INDEX, INITIAL_MAP_SIZE,
    varint, iter_fields, encode_field_varint, encode_field_bytes, Datum, record_key, shard_name,
    RecordChecksum, LmdbMeta, read_lmdb_meta, check_lmdb, open_reader, iter_records, DamagedRecord,
    read_datum, record_pixels, MANIFEST, REJECTS, read_manifest, shard_dirs, load_shard_meta, read_rejects,
    Keys, key_index_problem, read_key_index, ShardStats, ShardWriter, read_shard_meta, ShardFormatError)  # noqa: F401 (API)
