"""The integration API for institutions and the public verification page, on the `api` port.

HTTP JSON over TLS (FastAPI, served by uvicorn inside kepmta's own event loop): submitting an
S/MIME-signed message through the very SubmissionService SMTP submission uses, the status and
evidence of one's messages, the quota, and the KEP directory; and `/dogrula`, where anyone checks
an evidence file without an account.
"""
