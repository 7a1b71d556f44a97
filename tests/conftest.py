import os, sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).parent))

import pytest
import torch

from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TEST, ADULT_TRAIN
from synthpool.common.loading import load_table
from synthpool.common.schema import Schema
from synthpool.common.threads import usable_cores

# `make test` runs one pytest worker per core (pytest-xdist): two torch threads each would
# oversubscribe the cores the workers share.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, usable_cores() // WORKERS)))


@pytest.fixture(scope="session")
def adult_schema() -> Schema:
    return Schema.load(ADULT_SCHEMA)


@pytest.fixture(scope="session")
def adult_train(adult_schema):
    return load_table(ADULT_TRAIN, adult_schema)[0]


@pytest.fixture(scope="session")
def adult_test(adult_schema):
    return load_table(ADULT_TEST, adult_schema)[0]


@pytest.fixture
def flower_task_identity():
    """flwr 1.42 builds a Message's metadata from TaskIdentity (flwr/app/message/message.py),
    which only a real flwr-serverapp/flwr-clientapp process sets: tests that run a ClientApp or
    the round loop in this process set it as such a process would."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    yield
    TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None

