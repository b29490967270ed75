def render_board_update(*, board_id: int, column_ids) -> str:
    return ""
