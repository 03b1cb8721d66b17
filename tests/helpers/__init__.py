"""Plain functions the tests share: data builders and independent references (numpy, protobuf), never fixtures.

tests/ is on sys.path (pyproject.toml: [tool.pytest.ini_options] pythonpath), so a test imports these as
`from helpers.shardgen import make_data_dir`; test modules never import each other.
"""
