/* ui.c — the web page served at /, built into the binary.
 *
 * ui/index.html is plain HTML, CSS and JavaScript with no build step and
 * nothing fetched from the network; the assembler's .incbin copies it into
 * the binary so a deployed ember needs no files beside it.
 */
#include "http.h"

__asm__(".section .rodata\n"
        ".global em_ui_html\n"
        ".type em_ui_html, @object\n"
        "em_ui_html:\n"
        ".incbin \"ui/index.html\"\n"
        "em_ui_html_end:\n"
        ".byte 0\n"
        ".global em_ui_html_len\n"
        ".type em_ui_html_len, @object\n"
        ".balign 4\n"
        "em_ui_html_len:\n"
        ".long em_ui_html_end - em_ui_html\n"
        ".previous\n");
