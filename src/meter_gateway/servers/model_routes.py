"""Read-only HTTP routes of the semantic models and the API description: /model/brick.ttl, /model/haystack.json,
/model/haystack.zinc and /openapi.json. Models are built off the event loop, once per configuration."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import TYPE_CHECKING

from .http import HttpServer, Response

if TYPE_CHECKING:
    from ..ports import ConfigFacts

log = logging.getLogger(__name__)
TURTLE = "text/turtle; charset=utf-8"
JSON = "application/json"
ZINC = "text/zinc; charset=utf-8"


class ModelRoutes:
    """Serves the Brick and Haystack models of the running gateway's configuration."""

    def __init__(self, facts: ConfigFacts) -> None:
        self.facts = facts
        self._cache: dict[str, tuple[object, bytes]] = {}  # name -> (config it was built from, body)
        self._lock = asyncio.Lock()
        self._warned = False

    def add_to(self, http: HttpServer) -> None:
        """Register the routes on an HTTP server."""
        http.route("/model/brick.ttl", self._brick, "viewer")
        http.route("/model/haystack.json", self._haystack_json, "viewer")
        http.route("/model/haystack.zinc", self._haystack_zinc, "viewer")
        http.route("/openapi.json", self._openapi)  # the API description is public

    def _inputs(self):
        facts = self.facts
        enabled = [m.id for m in facts.config.meters if m.enabled]
        return facts.config, facts.catalogue, {m: facts.meter_points(m) for m in enabled}

    async def _built(self, name: str, build) -> bytes:
        cfg = self.facts.config
        async with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] is cfg:
                return hit[1]
            inputs = self._inputs()
            body = await asyncio.to_thread(build, *inputs)
            self._cache[name] = (cfg, body)
            return body

    async def _brick(self, _query) -> Response:
        try:
            from ..models.brick import to_turtle
        except ImportError as exc:
            if not self._warned:
                log.warning("the Brick model needs %s: pip install 'meter-gateway[models]'", exc.name)
                self._warned = True
            return Response(503, f"the Brick model needs {exc.name}: pip install 'meter-gateway[models]'\n".encode())
        return Response(200, await self._built("brick", lambda *a: to_turtle(*a).encode()), TURTLE)

    async def _haystack_json(self, _query) -> Response:
        from ..models.haystack import entities, to_json

        return Response(200, await self._built("hs-json", lambda *a: to_json(entities(*a)).encode()), JSON)

    async def _haystack_zinc(self, _query) -> Response:
        from ..models.haystack import entities, to_zinc

        return Response(200, await self._built("hs-zinc", lambda *a: to_zinc(entities(*a)).encode()), ZINC)

    def _openapi(self, _query) -> Response:
        return Response(200, resources.files("meter_gateway").joinpath("data/openapi.json").read_bytes(), JSON)
