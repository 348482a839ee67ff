"""Administration commands: database migrations, users, API keys and delivery."""
