"""Tile-configuration search: space, cost model, builder/runner, database."""
