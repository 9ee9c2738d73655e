"""The REST API under /api/v1/ (issue 22): DRF views over the services and selectors the pages use, token and
session authentication, one error shape, the OpenAPI schema and its docs page."""
