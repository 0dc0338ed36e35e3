"""Delivery of finished exports over HTTP: `serve` (downloads by signed link, the status page) and the HTTP API."""
