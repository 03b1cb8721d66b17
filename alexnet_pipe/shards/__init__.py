"""The data dir's format: Caffe Datum records in LMDB shards, their manifest, keys, checksums and statistics.

Every stage above reads shards through this wing; `from alexnet_pipe.shards import Datum, shard_dirs` keeps working.
Library modules import from the module of each idea (codec, lmdbfile, records, manifest, keyindex, shardstats,
writer); these re-exports are the public API.
"""
from alexnet_pipe.core.errors import ShardFormatError  # noqa: F401 (API)
from alexnet_pipe.shards.codec import (Datum, encode_field_bytes, encode_field_varint, iter_fields,  # noqa: F401
                                       varint)
from alexnet_pipe.shards.keyindex import KEY_INDEX, Keys, key_index_problem  # noqa: F401 (API)
from alexnet_pipe.shards.lmdbfile import LmdbMeta, check_lmdb, iter_records, open_reader, read_lmdb_meta  # noqa: F401
from alexnet_pipe.shards.manifest import (FORMAT_VERSION, MANIFEST, REJECTS, SHARD_META, load_shard_meta,  # noqa: F401
                                          read_manifest, read_rejects, read_shard_meta, shard_dirs)
from alexnet_pipe.shards.records import (DamagedRecord, RecordChecksum, read_datum, record_key,  # noqa: F401 (API)
                                         record_pixels, shard_name)
from alexnet_pipe.shards.shardstats import SHARD_STATS, ShardStats  # noqa: F401 (API)
from alexnet_pipe.shards.writer import INITIAL_MAP_SIZE, ShardWriter  # noqa: F401 (API)
