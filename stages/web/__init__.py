"""Fetching from the web and from local paths: direct HTTP, yt-dlp, politeness, address guards, the media folder."""
