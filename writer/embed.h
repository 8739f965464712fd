/* embed: files compiled into a binary by scripts/embed.sh. */
#ifndef TOKMON_EMBED_H
#define TOKMON_EMBED_H

#include <stddef.h>

typedef struct {
    const char *name; /* the file's base name */
    const char *data; /* its bytes, then a NUL */
    size_t len;
} embed_file_t;

/* writer/migrations/NNN_*.sql, in order */
extern const embed_file_t pgw_migrations[];
extern const size_t pgw_migrations_n;

#endif
