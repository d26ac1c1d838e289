"""The HTTP side beyond metrics: logins and roles, the JSON/SSE API, the pages."""
