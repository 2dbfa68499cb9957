#!/usr/bin/env python3
"""Merge result JSON files into one report: python render_report.py DIR [DIR ...] -o report.html [--markdown report.md]"""
import sys

from bench.report import main

if __name__ == "__main__":
    sys.exit(main())
