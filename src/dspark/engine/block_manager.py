"""`BlockManager`: the pages of the paged KV cache — free list, reference counts, prefix cache.

One page holds `page_size` consecutive positions of one request, for the target's layers AND the
drafter's context layers (both caches use the same page ids), so whatever happens to a page happens
to both. Page 0 is the null page (padding writes land there) and is never handed out.

Prefix cache: once a request has computed K/V for every position of its page i (target and drafter,
written in the same step), the page is registered under a key made of the key of page i-1, the page's
tokens, and the token that follows the page. The following token is part of the key because a chain
drafter's (Eagle3, MTP-1) K/V at a position depends on the next token; including it keeps a hit exact
for every drafter. Keys are exact tuples with a unique id per registered page chain, never hashes that
could collide. A freed page keeps its key and stays findable until the free list hands it out again
(least recently freed first), so a later request with the same prefix reuses it.

Pages shared through a hit are never written again: a request writes only positions >= its
num_computed, which lie past its cached full pages.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[int, tuple[int, ...], int]  # (parent chain id, page tokens, following token)


class BlockManager:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True) -> None:
        if num_pages < 2 or page_size < 1:
            raise ValueError(f"need num_pages >= 2 (page 0 is reserved) and page_size >= 1, got {num_pages}, {page_size}")
        self.num_pages, self.page_size = num_pages, page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref = [0] * num_pages
        self.free: OrderedDict[int, None] = OrderedDict((p, None) for p in range(1, num_pages))  # LRU order
        self.key_of: dict[int, Key] = {}  # page -> its registered key
        self.page_of: dict[Key, int] = {}  # key -> page
        self.chain_id: dict[int, int] = {}  # page -> unique id of its key (parent id of the next page)
        self._next_chain = 1
        self.hits = 0  # prefix-cache pages reused (for metrics)

    # ------------------------------------------------------------------------------ capacity
    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_pages - 1 - len(self.free)

    def pages_for(self, num_positions: int) -> int:
        return -(-num_positions // self.page_size)

    def can_grow(self, pages: list[int], num_positions: int) -> bool:
        return self.pages_for(num_positions) - len(pages) <= self.num_free

    # ------------------------------------------------------------------------------ pages
    def _take(self) -> int:
        page, _ = self.free.popitem(last=False)
        key = self.key_of.pop(page, None)  # reused: its old contents are gone
        if key is not None:
            del self.page_of[key]
            self.chain_id.pop(page, None)
        self.ref[page] = 1
        return page

    def grow(self, pages: list[int], num_positions: int) -> bool:
        """Append pages so `pages` covers `num_positions`; False (nothing taken) if too few are free."""
        need = self.pages_for(num_positions) - len(pages)
        if need > self.num_free:
            return False
        pages.extend(self._take() for _ in range(max(need, 0)))
        return True

    def release(self, pages: list[int]) -> None:
        """Drop one reference to each page (a finished, aborted or preempted request); empties the list."""
        for page in reversed(pages):  # the tail first: prefix pages stay findable longest
            if self.ref[page] <= 0:
                raise RuntimeError(f"page {page} released twice")
            self.ref[page] -= 1
            if self.ref[page] == 0:
                self.free[page] = None
        pages.clear()

    # ------------------------------------------------------------------------------ prefix cache
    def _key(self, parent: int, tokens: list[int], index: int) -> Key:
        ps = self.page_size
        return (parent, tuple(tokens[index * ps:(index + 1) * ps]), tokens[(index + 1) * ps])

    def match_prefix(self, tokens: list[int], limit: int) -> list[int]:
        """Take references on the cached pages of the longest registered prefix of `tokens`.

        Only pages whose positions AND following token lie below `limit` count (the caller keeps at
        least one position to compute). Returns the pages (the request's first pages).
        """
        if not self.enable_prefix_caching:
            return []
        pages: list[int] = []
        parent = 0
        while (len(pages) + 1) * self.page_size < limit:
            page = self.page_of.get(self._key(parent, tokens, len(pages)))
            if page is None:
                break
            pages.append(page)
            parent = self.chain_id[page]
        for page in pages:
            if self.ref[page] == 0:
                del self.free[page]
            self.ref[page] += 1
        self.hits += len(pages)
        return pages

    def completes_pages(self, pages: list[int], num_tokens: int, num_computed: int, num_registered: int) -> bool:
        """Would `register` register anything for a request of `num_tokens` tokens? (Read no tokens: a
        caller builds the token list only then.)"""
        if not self.enable_prefix_caching:
            return False
        return min(num_computed // self.page_size, len(pages), (num_tokens - 1) // self.page_size) > num_registered

    def register(self, pages: list[int], tokens: list[int], num_computed: int, num_registered: int) -> int:
        """Register the request's pages that became complete; returns the new count of registered pages.

        Page i is complete when positions up to (i+1)·page_size - 1 are computed and the token after
        them is known (always true here: a request knows one token past num_computed).
        """
        if not self.enable_prefix_caching:
            return num_registered
        ps = self.page_size
        complete = min(num_computed // ps, len(pages), (len(tokens) - 1) // ps)
        parent = self.chain_id.get(pages[num_registered - 1], 0) if num_registered else 0
        for i in range(num_registered, complete):
            page = pages[i]
            key = self._key(parent, tokens, i)
            if page in self.key_of:  # a cached page this request reused
                parent = self.chain_id[page]
                continue
            if key in self.page_of:  # the same content computed twice: keep the first, this one stays private
                parent = self.chain_id[self.page_of[key]]
                continue
            self.key_of[page], self.page_of[key] = key, page
            self.chain_id[page] = self._next_chain
            parent = self._next_chain
            self._next_chain += 1
        return max(complete, num_registered)
