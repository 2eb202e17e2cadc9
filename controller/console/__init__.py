"""The deploy console: server-rendered pages for the person who owns the deploy decision.

- :mod:`.auth`: sessions (HttpOnly, SameSite=Strict cookies with an expiry), CSRF tokens, and slowing
  down repeated wrong passwords;
- :mod:`.pages`: what each page shows, gathered from the same deployment the CLI drives;
- :mod:`.app`: the routes; actions call the same operations as the CLI, under the same lock;
- :mod:`.serve`: ``release console`` (in the foreground, or detached until ``release down``).
"""
