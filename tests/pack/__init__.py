"""The pack controller: its module side, mixed buses, hot-plugging, restarts."""
