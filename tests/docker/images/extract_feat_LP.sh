#!/bin/sh
exec python3 /app/tool.py lp
