"""Delivery of finished exports over HTTP: signed download links and the status page."""
