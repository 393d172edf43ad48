/* connectors.c — the registry of compiled-in connectors. */
#include <string.h>

#include "connector.h"

extern const em_connector em_generator_connector;
extern const em_connector em_socket_connector;
extern const em_connector em_file_connector;
extern const em_connector em_kafka_connector;
extern const em_connector em_redis_connector;
extern const em_connector em_rabbitmq_connector;

static const em_connector *const all[] = {
    &em_generator_connector,
    &em_socket_connector,
    &em_file_connector,
    &em_kafka_connector,
    &em_redis_connector,
    &em_rabbitmq_connector,
    NULL,
};

const em_connector *em_connector_find(const char *name)
{
    for (const em_connector *const *c = all; *c; c++)
        if (strcmp((*c)->name, name) == 0)
            return *c;
    return NULL;
}

const char *em_connector_names(void)
{
    static char names[256];
    if (!names[0])
        for (const em_connector *const *c = all; *c; c++) {
            if (c != all)
                strcat(names, ", ");
            strcat(names, (*c)->name);
        }
    return names;
}
