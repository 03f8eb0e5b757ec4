"""Unit tier: fast library tests, one file per module where practical; they build no run and execute no notebook
(``make test-fast``)."""
