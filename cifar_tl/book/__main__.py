"""`python -m cifar_tl.book sync-url | readme-table | precision-table`: the course's maintenance commands."""

from __future__ import annotations

import sys

from cifar_tl.book import repository
from cifar_tl.book.course import readme_table


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["sync-url"]:
        changed = repository.sync_repository_url()
        print(f"repository {repository.repository_url()}: "
              + (", ".join(changed) if changed else "every install line already names it"))
        return 0
    if args == ["readme-table"]:
        print(readme_table())
        return 0
    if args == ["precision-table"]:
        from cifar_tl.book.cost_views import precision_markdown

        print(precision_markdown())
        return 0
    print("usage: python -m cifar_tl.book sync-url       rewrite install lines and Colab links to _config.yml's "
          "repository.url\n"
          "       python -m cifar_tl.book readme-table   print the README's table of measured rungs from the records\n"
          "       python -m cifar_tl.book precision-table   print full's records in bf16 against fp32, paired by subset",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
