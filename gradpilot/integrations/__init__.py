"""gradpilot on other engines: each module needs its library's extra (``pip install 'gradpilot[ray]'``)."""
