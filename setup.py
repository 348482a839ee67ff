from setuptools import find_packages, setup

setup(
    name="pop3d",
    version="0.1.0",
    description="A preforking POP3 server for mail kept in PostgreSQL",
    packages=find_packages(include=["pop3d", "pop3d.*"]),
    package_data={"pop3d.store": ["migrations/*.sql"]},
    python_requires=">=3.11",
    install_requires=[
        "psycopg2-binary>=2.9",
        "bcrypt>=4.0",
        "pymemcache>=4.0",
        "statsd>=4.0",
        "click>=8.1",
        "setproctitle>=1.3",
    ],
    extras_require={
        # Spans per command and login step when [tracing] is enabled (docs/SCALING.md).
        "tracing": ["opentelemetry-api>=1.20"],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "mypy>=1.10",
            "types-psycopg2",
            "opentelemetry-sdk>=1.20",  # the in-memory span exporter of the tracing tests
        ],
    },
    entry_points={"console_scripts": ["pop3d = pop3d.cli:main",
                                      "pop3bench = pop3d.bench.cli:main"]},
)
