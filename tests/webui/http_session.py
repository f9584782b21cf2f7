"""Log in to a running web UI over real HTTP (urllib with a cookie jar), for end-to-end tests."""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar


def web_session(base_url: str, name: str, password: str, first_boot: bool = False) -> urllib.request.OpenerDirector:
    """An opener holding a logged-in session; ``first_boot`` sets the admin password on /setup first."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    path = "/setup" if first_boot else "/login"
    with opener.open(base_url + path, timeout=10) as response:
        page = response.read().decode()
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token, f"no form on {path}"
    form = {"csrf_token": token.group(1), "name": name, "password": password}
    if first_boot:
        form["confirm"] = password
    with opener.open(base_url + path, data=urllib.parse.urlencode(form).encode(), timeout=10) as response:
        assert urllib.parse.urlparse(response.url).path == "/", f"{path} did not log in: {response.url}"
    return opener
