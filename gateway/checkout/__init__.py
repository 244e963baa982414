"""Checkout: each lane's receipts become live baskets, loyalty links and sales."""
