"""What the routes share: settings, Redis clients and the domain services, built once per app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from fastapi import Request

from app.contract import Keys
from app.lifecycle import Lifecycle
from app.models_config import ModelsConfig
from app.records import Records
from app.settings import Settings
from app.submission import Submitter


@dataclass
class AppState:
    settings: Settings
    models: ModelsConfig
    keys: Keys
    aio: Any  # redis.asyncio.Redis
    sync: redis.Redis
    lifecycle: Lifecycle
    submitter: Submitter
    records: Records


def get_state(request: Request) -> AppState:
    return request.app.state.sdxl
